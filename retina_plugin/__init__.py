"""RetinaNet and the focal-loss family as a detectron2 plugin: `import retina_plugin` registers
FocalRetinaNet in detectron2's META_ARCH_REGISTRY, its head in RETINA_HEAD_REGISTRY and the
classification losses in CLS_LOSS_REGISTRY."""
import warnings as _warnings

# Deprecation notices that detectron2 and fvcore set off inside torch and setuptools on every
# run: nothing a user of the plugin can act on. Every other warning, the plugin's own
# included, still shows. Entry points import retina_plugin before detectron2 for this.
_warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
_warnings.filterwarnings("ignore", message=r"pkg_resources is deprecated", category=UserWarning)

from . import backbone, data, pretrain  # noqa: E402  only registration: a CPU-sized backbone, the built-in data sets, retina_pretrained://
from .config import ConfigValueError, add_retina_config, merge_config_file, merge_config_list
from .head import RETINA_HEAD_REGISTRY, RetinaHead, build_retina_head
from .losses import (
    CLS_LOSS_REGISTRY,
    ClassificationLoss,
    FocalLoss,
    FocalStarLoss,
    GHMCLoss,
    OHEMLoss,
    Poly1FocalLoss,
    QualityFocalLoss,
    SoftmaxFocalLoss,
    VarifocalLoss,
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
    "GHMCLoss",
    "OHEMLoss",
    "Poly1FocalLoss",
    "QualityFocalLoss",
    "SoftmaxFocalLoss",
    "VarifocalLoss",
    "build_cls_loss",
    "sigmoid_focal_loss",
    "FocalRetinaNet",
    "validate_config",
]
