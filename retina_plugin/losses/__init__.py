from .build import CLS_LOSS_REGISTRY, build_cls_loss
from ..ops import sigmoid_focal_loss
from .focal import FocalLoss  # also registers "focal"

__all__ = ["CLS_LOSS_REGISTRY", "build_cls_loss", "FocalLoss", "sigmoid_focal_loss"]
