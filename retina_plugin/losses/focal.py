from detectron2.config import configurable

from ..config import check_config_value
from ..ops.focal_loss import IMPLS, sigmoid_focal_loss
from .build import CLS_LOSS_REGISTRY, ClassificationLoss

ALPHA_KEY = "MODEL.RETINANET.FOCAL_LOSS_ALPHA"


def check_alpha(check, alpha, num_classes=None, per_class=True):
    """
    Check FOCAL_LOSS_ALPHA: a weight in [0, 1] or -1 (none), or, where the loss takes one,
    a list of weights in [0, 1], one per class (num_classes of them, when given).
    """
    if isinstance(alpha, (list, tuple)):
        if not per_class:
            check(False, ALPHA_KEY, alpha, "this loss takes one number, not one per class")
            return
        check(
            num_classes in (None, len(alpha)) and all(0 <= a <= 1 for a in alpha),
            ALPHA_KEY,
            alpha,
            f"give one weight in [0, 1] per class ({num_classes}, MODEL.RETINANET.NUM_CLASSES), "
            f"or one number for all",
        )
        return
    check(alpha == -1 or 0 <= alpha <= 1, ALPHA_KEY, alpha, "use a weight in [0, 1], or -1 for no balancing")


def as_alpha(alpha):
    """An alpha as a float, or a tuple of per-class floats."""
    return tuple(float(a) for a in alpha) if isinstance(alpha, (list, tuple)) else float(alpha)


def alpha_from_config(cfg):
    return as_alpha(cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA)


def check_impl(check, impl):
    """MODEL.RETINANET.FOCAL_LOSS_IMPL, which every fused op of the family reads."""
    check(impl in IMPLS, "MODEL.RETINANET.FOCAL_LOSS_IMPL", impl, f"choose one of {IMPLS}")


@CLS_LOSS_REGISTRY.register_as("focal")
class FocalLoss(ClassificationLoss):
    """
    The paper's classification loss, summed over all anchors that are not ignored.
    The paper's ablation variants are alpha/gamma settings (configs/losses/):
    CE (alpha -1, gamma 0), balanced CE (0.75, 0), FL (-1, 2), balanced FL (0.25, 2).
    FOCAL_LOSS_ALPHA may also be a list with one alpha per class.
    """

    @configurable
    def __init__(self, *, alpha=0.25, gamma: float = 2.0, impl: str = "auto", num_classes=None):
        super().__init__()
        self.check_values(check_config_value, alpha, gamma, impl, num_classes)
        self.alpha = as_alpha(alpha)
        self.gamma = float(gamma)
        self.impl = impl

    @staticmethod
    def check_values(check, alpha, gamma, impl, num_classes):
        """Call check(ok, key, value, allowed) for each value (see config.check_config_value)."""
        check_impl(check, impl)
        check_alpha(check, alpha, num_classes)
        is_number = isinstance(gamma, (int, float)) and not isinstance(gamma, bool)
        check(is_number and gamma >= 0, "MODEL.RETINANET.FOCAL_LOSS_GAMMA", gamma, "use gamma >= 0, a number (0 is CE)")

    @classmethod
    def from_config(cls, cfg):
        return {
            "alpha": alpha_from_config(cfg),
            "gamma": cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA,
            "impl": cfg.MODEL.RETINANET.FOCAL_LOSS_IMPL,
            "num_classes": cfg.MODEL.RETINANET.NUM_CLASSES,
        }

    def forward(self, pred_logits, gt_labels, anchors=None, quality=None):
        """pred_logits (N, R, K), gt_labels (N, R) -> the loss summed over anchors."""
        return sigmoid_focal_loss(
            pred_logits, gt_labels, self.alpha, self.gamma, reduction="sum", impl=self.impl
        )

    def extra_repr(self):
        return f"alpha={self.alpha}, gamma={self.gamma}"
