from .build import CLS_LOSS_REGISTRY, ClassificationLoss, build_cls_loss
from ..ops import sigmoid_focal_loss

# Each module registers its loss in CLS_LOSS_REGISTRY.
from .focal import FocalLoss
from .focal_star import FocalStarLoss, sigmoid_focal_star_loss
from .ohem import OHEMLoss, select_hard_anchors
from .softmax_focal import SoftmaxFocalLoss, softmax_focal_loss

__all__ = [
    "CLS_LOSS_REGISTRY",
    "ClassificationLoss",
    "build_cls_loss",
    "FocalLoss",
    "FocalStarLoss",
    "OHEMLoss",
    "SoftmaxFocalLoss",
    "select_hard_anchors",
    "sigmoid_focal_loss",
    "sigmoid_focal_star_loss",
    "softmax_focal_loss",
]
