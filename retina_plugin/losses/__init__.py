from .build import CLS_LOSS_REGISTRY, ClassificationLoss, build_cls_loss
from ..ops import sigmoid_focal_loss

# Each module registers its loss in CLS_LOSS_REGISTRY.
from .focal import FocalLoss
from .focal_star import FocalStarLoss, sigmoid_focal_star_loss
from .ohem import OHEMLoss, select_hard_anchors
from .softmax_focal import SoftmaxFocalLoss, softmax_focal_loss
from .quality_focal import QualityFocalLoss, quality_focal_loss
from .varifocal import VarifocalLoss, varifocal_loss
from .poly1_focal import Poly1FocalLoss, poly1_focal_loss
from .ghm_c import GHMCLoss, ghm_c_loss

__all__ = [
    "CLS_LOSS_REGISTRY",
    "ClassificationLoss",
    "build_cls_loss",
    "FocalLoss",
    "FocalStarLoss",
    "OHEMLoss",
    "SoftmaxFocalLoss",
    "QualityFocalLoss",
    "VarifocalLoss",
    "Poly1FocalLoss",
    "GHMCLoss",
    "ghm_c_loss",
    "quality_focal_loss",
    "varifocal_loss",
    "poly1_focal_loss",
    "select_hard_anchors",
    "sigmoid_focal_loss",
    "sigmoid_focal_star_loss",
    "softmax_focal_loss",
]
