"""RetinaNet and the focal-loss family as a detectron2 plugin: `import retina_plugin` registers
FocalRetinaNet in detectron2's META_ARCH_REGISTRY, its head in RETINA_HEAD_REGISTRY and the
classification losses in CLS_LOSS_REGISTRY."""
from . import backbone, data  # only registration: a CPU-sized backbone, the built-in data sets
from .config import ConfigValueError, add_retina_config, merge_config_file, merge_config_list
from .head import RETINA_HEAD_REGISTRY, RetinaHead, build_retina_head
from .losses import (
    CLS_LOSS_REGISTRY,
    ClassificationLoss,
    FocalLoss,
    FocalStarLoss,
    OHEMLoss,
    SoftmaxFocalLoss,
    build_cls_loss,
    sigmoid_focal_loss,
)
from .meta_arch import FocalRetinaNet
from .validate import validate_config

__all__ = [
    "add_retina_config",
    "merge_config_file",
    "merge_config_list",
    "ConfigValueError",
    "RETINA_HEAD_REGISTRY",
    "RetinaHead",
    "build_retina_head",
    "CLS_LOSS_REGISTRY",
    "ClassificationLoss",
    "FocalLoss",
    "FocalStarLoss",
    "OHEMLoss",
    "SoftmaxFocalLoss",
    "build_cls_loss",
    "sigmoid_focal_loss",
    "FocalRetinaNet",
    "validate_config",
]
