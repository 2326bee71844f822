import torch
from torch.nn import functional as F

from detectron2.config import configurable

from ..config import check_config_value
from ..ops.pair_losses import class_targets, fused_pair_loss, quality_focal_kernel
from .build import CLS_LOSS_REGISTRY, ClassificationLoss
from .focal import check_impl


def quality_focal_loss(logits, labels, quality, beta=2.0, impl="auto"):
    """
    Quality focal loss of Li et al., "Generalized Focal Loss" (NeurIPS 2020), summed:

        y   = the anchor's IoU quality at its own class, 0 at every other class
        QFL = -|y - sigmoid(x)|^beta * ((1 - y) log(1 - sigmoid(x)) + y log(sigmoid(x)))

    A sigmoid cross-entropy against a soft target, scaled by the distance to it: the class
    score learns the localisation quality. Labels as sigmoid_focal_loss's (K background, -1
    ignored); quality (N, R) as ClassificationLoss.needs_quality gives it. `impl`: "auto",
    "compiled" or "eager" (loss and closed-form gradient in one pass, ops/pair_losses.py), or
    "plain" (autograd).
    """
    if impl != "plain":
        return fused_pair_loss(quality_focal_kernel, logits, labels, quality, (beta,), impl=impl)
    x = logits.to(torch.promote_types(logits.dtype, torch.float32))
    _, target, valid = class_targets(x, labels, quality)
    loss = F.binary_cross_entropy_with_logits(x, target, reduction="none")
    loss = loss * (target - torch.sigmoid(x)).abs().pow(beta)
    return (loss * valid).sum()


@CLS_LOSS_REGISTRY.register_as("quality_focal")
class QualityFocalLoss(ClassificationLoss):
    """QFL (GFL): MODEL.RETINANET.QUALITY_FOCAL.BETA. Its class score is an IoU-aware score."""

    needs_quality = True

    @configurable
    def __init__(self, *, beta: float = 2.0, impl: str = "auto"):
        super().__init__()
        self.check_values(check_config_value, beta, impl)
        self.beta, self.impl = float(beta), impl

    @staticmethod
    def check_values(check, beta, impl="auto"):
        check_impl(check, impl)
        ok = isinstance(beta, (int, float)) and not isinstance(beta, bool) and beta >= 1
        check(ok, "MODEL.RETINANET.QUALITY_FOCAL.BETA", beta, "use a number >= 1 (the paper: 2)")

    @classmethod
    def from_config(cls, cfg):
        return {"beta": cfg.MODEL.RETINANET.QUALITY_FOCAL.BETA, "impl": cfg.MODEL.RETINANET.FOCAL_LOSS_IMPL}

    def forward(self, pred_logits, gt_labels, anchors=None, quality=None):
        return quality_focal_loss(pred_logits, gt_labels, quality, self.beta, impl=self.impl)

    def extra_repr(self):
        return f"beta={self.beta}"
