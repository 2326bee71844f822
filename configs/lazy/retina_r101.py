"""
The paper's RetinaNet, R-101-FPN on COCO (configs/retina_r101.yaml), as a LazyConfig: the R-50
one (retina_r50.py) with a deeper backbone.

    python train_net.py --config-file configs/lazy/retina_r101.py
"""
from .retina_r50 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.backbone.bottom_up.stages.depth = 101
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-101.pkl"
train.output_dir = "./output/lazy_retina_r101"
