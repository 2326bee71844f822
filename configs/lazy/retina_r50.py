"""
The paper's RetinaNet, R-50-FPN on COCO (configs/retina_r50.yaml), as a LazyConfig built on
detectron2's model-zoo common configs (model, data, optimizer, schedule, train):

    python train_net.py --config-file configs/lazy/retina_r50.py
    python train_net.py --config-file configs/lazy/retina_r50.py model.cls_loss.gamma=0   # balanced CE
    python train_net.py --config-file configs/lazy/retina_r50.py --eval-only train.init_checkpoint=model.pth

The classification loss is a lazily built object: a variant is one override of its arguments
or of its `_target_` (any class of retina_plugin's CLS_LOSS_REGISTRY), and the head takes its
logits per anchor and their prior bias from it.
"""
from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config

from retina_plugin import FocalLoss, FocalRetinaNet, RetinaHead
from retina_plugin.evaluation import EngineCOCOEvaluator

model = get_config("common/models/retinanet.py").model
model._target_ = FocalRetinaNet
model.cls_loss = L(FocalLoss)(alpha=0.25, gamma=2.0)
del model.focal_loss_alpha, model.focal_loss_gamma  # the loss is model.cls_loss
model.loss_normalizer = "ema"  # "num_pos" for the paper's exact normalisation
model.head._target_ = RetinaHead
model.head.cls_loss = "${..cls_loss}"
model.backbone.bottom_up.freeze_at = 2

dataloader = get_config("common/data/coco.py").dataloader
dataloader.train.mapper.use_instance_mask = False
dataloader.evaluator._target_ = EngineCOCOEvaluator  # TEST.COCO_EVAL_ENGINE's default engine

optimizer = get_config("common/optim.py").SGD
optimizer.lr = 0.01
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_1x

train = get_config("common/train.py").train
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.output_dir = "./output/lazy_retina_r50"
