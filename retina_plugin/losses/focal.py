from torch import nn

from detectron2.config import configurable

from ..config import check_config_value
from ..ops.focal_loss import IMPLS, sigmoid_focal_loss
from .build import CLS_LOSS_REGISTRY


@CLS_LOSS_REGISTRY.register_as("focal")
class FocalLoss(nn.Module):
    """
    The paper's classification loss, summed over all anchors that are not ignored.
    The paper's ablation variants are alpha/gamma settings (configs/losses/):
    CE (alpha -1, gamma 0), balanced CE (0.75, 0), FL (-1, 2), balanced FL (0.25, 2).
    """

    @configurable
    def __init__(self, *, alpha: float = 0.25, gamma: float = 2.0, impl: str = "auto"):
        super().__init__()
        self.check_values(check_config_value, alpha, gamma, impl)
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.impl = impl

    @staticmethod
    def check_values(check, alpha, gamma, impl):
        """Call check(ok, key, value, allowed) for each value (see config.check_config_value)."""
        check(impl in IMPLS, "MODEL.RETINANET.FOCAL_LOSS_IMPL", impl, f"choose one of {IMPLS}")
        check(
            alpha == -1 or 0 <= alpha <= 1,
            "MODEL.RETINANET.FOCAL_LOSS_ALPHA",
            alpha,
            "use a weight in [0, 1], or -1 for no balancing",
        )
        check(gamma >= 0, "MODEL.RETINANET.FOCAL_LOSS_GAMMA", gamma, "use gamma >= 0 (0 is CE)")

    @classmethod
    def check_config(cls, cfg, check):
        cls.check_values(check, **cls.from_config(cfg))

    @classmethod
    def from_config(cls, cfg):
        return {
            "alpha": cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA,
            "gamma": cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA,
            "impl": cfg.MODEL.RETINANET.FOCAL_LOSS_IMPL,
        }

    def forward(self, pred_logits, gt_labels):
        """pred_logits (N, R, K), gt_labels (N, R) -> the loss summed over anchors."""
        return sigmoid_focal_loss(
            pred_logits, gt_labels, self.alpha, self.gamma, reduction="sum", impl=self.impl
        )

    def extra_repr(self):
        return f"alpha={self.alpha}, gamma={self.gamma}"
