"""
The quickstart (configs/quickstart.yaml) as a LazyConfig: the same model (state_dict keys,
shapes and losses: tests/test_lazy.py), data, solver and schedule.

    python train_net.py --config-file configs/lazy/quickstart.py
    python train_net.py --config-file configs/lazy/quickstart.py model.cls_loss.gamma=0 model.cls_loss.alpha=0.75
    python train_net.py --config-file configs/lazy/quickstart.py \
        model.cls_loss._target_=retina_plugin.SoftmaxFocalLoss       # another loss: one swap
"""
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.data import transforms as T
from detectron2.layers import ShapeSpec
from detectron2.model_zoo import get_config
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone import FPN, BasicStem, ResNet
from detectron2.modeling.backbone.fpn import LastLevelP6P7
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from retina_plugin import FocalLoss, FocalRetinaNet, RetinaHead
from retina_plugin.backbone import basic_resnet_stages
from retina_plugin.data import CheckedDatasetMapper
from retina_plugin.evaluation import EngineCOCOEvaluator
from retina_plugin.lazy import sgd_with_gradient_clipping

# ResNet-18 at half width with RetinaNet's FPN, P3-P7 (build_retinanet_basic_resnet_fpn_backbone).
model = L(FocalRetinaNet)(
    backbone=L(FPN)(
        bottom_up=L(ResNet)(
            stem=L(BasicStem)(in_channels=3, out_channels=32, norm="BN"),
            stages=L(basic_resnet_stages)(depth=18, stem_out_channels=32, res2_out_channels=32, norm="BN"),
            out_features=["res3", "res4", "res5"],
            freeze_at=0,
        ),
        in_features=["res3", "res4", "res5"],
        out_channels=64,
        top_block=L(LastLevelP6P7)(in_channels=256, out_channels="${..out_channels}"),
    ),
    head=L(RetinaHead)(
        input_shape=[ShapeSpec(channels=64)] * 5,
        num_classes="${..num_classes}",
        num_anchors=9,
        conv_dims=[64, 64],
        norm="GN",
        prior_prob=0.01,
        cls_loss="${..cls_loss}",  # logits per anchor and their prior bias come from the loss
    ),
    cls_loss=L(FocalLoss)(alpha=0.25, gamma=2.0),
    # Objects are 12-64 px: anchors from 12 px on P3, 3 scales per octave as in the paper
    # (the numbers of quickstart.yaml, to the digit).
    anchor_generator=L(DefaultAnchorGenerator)(
        sizes=[[12, 15.12, 19.05], [24, 30.24, 38.1], [48, 60.48, 76.2], [96, 120.95, 152.4], [192, 241.9, 304.8]],
        aspect_ratios=[0.5, 1.0, 2.0],
        strides=[8, 16, 32, 64, 128],
        offset=0.0,
    ),
    box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
    anchor_matcher=L(Matcher)(thresholds=[0.4, 0.5], labels=[0, -1, 1], allow_low_quality_matches=True),
    num_classes=6,
    head_in_features=["p3", "p4", "p5", "p6", "p7"],
    loss_normalizer="ema",
    pixel_mean=[103.53, 116.28, 123.675],
    pixel_std=[57.375, 57.120, 58.395],
    input_format="BGR",
)

dataloader = dict(
    train=L(build_detection_train_loader)(
        dataset=L(get_detection_dataset_dicts)(names="retina_shapes_train"),
        mapper=L(CheckedDatasetMapper)(
            is_train=True,
            augmentations=[
                L(T.ResizeShortestEdge)(short_edge_length=(160,), max_size=160, sample_style="choice"),
                L(T.RandomFlip)(horizontal=True),
            ],
            image_format="BGR",
        ),
        total_batch_size=8,
        num_workers=0,  # a loader process would compete for the CPU's cores
    ),
    test=L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names="retina_shapes_val", filter_empty=False),
        mapper=L(CheckedDatasetMapper)(
            is_train=False,
            augmentations=[L(T.ResizeShortestEdge)(short_edge_length=160, max_size=160)],
            image_format="BGR",
        ),
        num_workers=0,
    ),
    evaluator=L(EngineCOCOEvaluator)(dataset_name="${..test.dataset.names}", engine="faster_coco_eval"),
)

# SGD at lr 0.02 with detectron2's gradient clipping (norm 5): from scratch, an early spike
# can diverge. Weight decay 1e-4, none on norm layers, as detectron2's yaml solver.
optimizer = get_config("common/optim.py").SGD
optimizer._target_ = sgd_with_gradient_clipping
optimizer.clip_value = 5.0
optimizer.lr = 0.02

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=[650, 750, 800]),
    warmup_length=100 / 800,
    warmup_factor=0.001,
)

train = get_config("common/train.py").train
train.max_iter = 800
train.device = "cpu"
train.eval_period = 0  # evaluated once, after training
train.checkpointer.period = 1000000  # only the final checkpoint
train.output_dir = "./output/lazy_quickstart"
