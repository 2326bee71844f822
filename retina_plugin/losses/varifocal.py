import torch
from torch.nn import functional as F

from detectron2.config import configurable

from ..config import check_config_value
from ..ops.pair_losses import class_targets, fused_pair_loss, varifocal_kernel
from .build import CLS_LOSS_REGISTRY, ClassificationLoss
from .focal import check_impl


def varifocal_loss(logits, labels, quality, alpha=0.75, gamma=2.0, impl="auto"):
    """
    Varifocal loss of Zhang et al., "VarifocalNet" (CVPR 2021), summed over (anchor, class):

        q   = the anchor's IoU quality at its own class, 0 at every other class
        p   = sigmoid(x)
        VFL = -q (q log p + (1 - q) log(1 - p))     where q > 0
            = -alpha p^gamma log(1 - p)              where q = 0

    Positives are weighted by their own quality, not down-weighted by a focal factor; only the
    negatives are. Labels as sigmoid_focal_loss's; quality as ClassificationLoss.needs_quality.
    `impl`: "auto", "compiled" or "eager" (ops/pair_losses.py), or "plain" (autograd).
    """
    if impl != "plain":
        return fused_pair_loss(varifocal_kernel, logits, labels, quality, (alpha, gamma), impl=impl)
    x = logits.to(torch.promote_types(logits.dtype, torch.float32))
    _, target, valid = class_targets(x, labels, quality)
    weight = torch.where(target > 0, target, alpha * torch.sigmoid(x).pow(gamma))
    loss = F.binary_cross_entropy_with_logits(x, target, reduction="none") * weight
    return (loss * valid).sum()


@CLS_LOSS_REGISTRY.register_as("varifocal")
class VarifocalLoss(ClassificationLoss):
    """VFL: MODEL.RETINANET.VARIFOCAL.ALPHA and .GAMMA. Its class score, the IoU-aware
    classification score, is used at inference as it is."""

    needs_quality = True

    @configurable
    def __init__(self, *, alpha: float = 0.75, gamma: float = 2.0, impl: str = "auto"):
        super().__init__()
        self.check_values(check_config_value, alpha, gamma, impl)
        self.alpha, self.gamma, self.impl = float(alpha), float(gamma), impl

    @staticmethod
    def check_values(check, alpha, gamma, impl="auto"):
        check_impl(check, impl)
        number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
        check(number(alpha) and 0 <= alpha, "MODEL.RETINANET.VARIFOCAL.ALPHA", alpha, "use a weight >= 0 (the paper: 0.75)")
        check(number(gamma) and 0 <= gamma, "MODEL.RETINANET.VARIFOCAL.GAMMA", gamma, "use gamma >= 0 (the paper: 2)")

    @classmethod
    def from_config(cls, cfg):
        return {
            "alpha": cfg.MODEL.RETINANET.VARIFOCAL.ALPHA,
            "gamma": cfg.MODEL.RETINANET.VARIFOCAL.GAMMA,
            "impl": cfg.MODEL.RETINANET.FOCAL_LOSS_IMPL,
        }

    def forward(self, pred_logits, gt_labels, anchors=None, quality=None):
        return varifocal_loss(pred_logits, gt_labels, quality, self.alpha, self.gamma, impl=self.impl)

    def extra_repr(self):
        return f"alpha={self.alpha}, gamma={self.gamma}"
