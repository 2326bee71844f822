import math

import torch

from detectron2.config import configurable

from ..config import check_config_value
from ..ops.focal_loss import sigmoid_focal_loss
from ..ops.pair_losses import fused_pair_loss, poly1_focal_kernel
from .build import CLS_LOSS_REGISTRY, ClassificationLoss
from .focal import alpha_from_config, as_alpha, check_alpha, check_impl


def poly1_focal_loss(logits, labels, alpha=0.25, gamma=2.0, epsilon=1.0, reduction="sum", impl="auto"):
    """
    Poly-1 focal loss of Leng et al., "PolyLoss" (ICLR 2022), summed:

        Poly-1 = FL(alpha, gamma) + epsilon * (1 - p_t)^(gamma + 1)

    the focal loss (sigmoid_focal_loss, fused) plus its first polynomial term, reweighted by
    epsilon (> 0 weighs hard examples more, < 0 less; 0 is FL). 1 - p_t = sigmoid(-x_t), with
    x_t = x for the anchor's own class and -x for the others; ignored anchors give nothing.
    `reduction` "sum" or "none" (per (anchor, class), as sigmoid_focal_loss's). `impl`:
    "auto", "compiled" or "eager" (both terms and their closed-form gradient in one pass,
    ops/pair_losses.py), or "plain" (the fused focal loss plus the polynomial term by autograd).
    """
    if impl != "plain":
        if isinstance(alpha, (list, tuple)):
            alpha = torch.tensor(alpha, dtype=torch.float64, device=logits.device)
        return fused_pair_loss(poly1_focal_kernel, logits, labels, None, (alpha, gamma, epsilon), reduction, impl)
    focal = sigmoid_focal_loss(logits, labels, alpha, gamma, reduction=reduction, impl="eager")
    x = logits.to(torch.promote_types(logits.dtype, torch.float32))
    is_target = labels.unsqueeze(-1) == torch.arange(x.shape[-1], device=x.device)
    one_minus_p_t = torch.sigmoid(torch.where(is_target, -x, x))
    poly = one_minus_p_t.pow(gamma + 1) * (labels >= 0).unsqueeze(-1)
    return focal + epsilon * (poly.sum() if reduction == "sum" else poly)


@CLS_LOSS_REGISTRY.register_as("poly1_focal")
class Poly1FocalLoss(ClassificationLoss):
    """Poly-1 on the focal loss: FOCAL_LOSS_ALPHA, FOCAL_LOSS_GAMMA and MODEL.RETINANET.POLY1.EPSILON."""

    @configurable
    def __init__(self, *, alpha=0.25, gamma: float = 2.0, epsilon: float = 1.0, impl: str = "auto", num_classes=None):
        super().__init__()
        self.check_values(check_config_value, alpha, gamma, epsilon, num_classes, impl)
        self.alpha, self.gamma, self.epsilon = as_alpha(alpha), float(gamma), float(epsilon)
        self.impl = impl

    @staticmethod
    def check_values(check, alpha, gamma, epsilon, num_classes, impl="auto"):
        check_impl(check, impl)
        check_alpha(check, alpha, num_classes)
        number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
        check(number(gamma) and gamma >= 0, "MODEL.RETINANET.FOCAL_LOSS_GAMMA", gamma, "use gamma >= 0, a number")
        check(number(epsilon) and math.isfinite(epsilon) and epsilon >= -1, "MODEL.RETINANET.POLY1.EPSILON", epsilon,
              "use epsilon >= -1 (below, the loss can fall under 0); the paper's default 1")

    @classmethod
    def from_config(cls, cfg):
        return {
            "alpha": alpha_from_config(cfg),
            "gamma": cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA,
            "epsilon": cfg.MODEL.RETINANET.POLY1.EPSILON,
            "impl": cfg.MODEL.RETINANET.FOCAL_LOSS_IMPL,
            "num_classes": cfg.MODEL.RETINANET.NUM_CLASSES,
        }

    def forward(self, pred_logits, gt_labels, anchors=None, quality=None):
        return poly1_focal_loss(pred_logits, gt_labels, self.alpha, self.gamma, self.epsilon, impl=self.impl)

    def extra_repr(self):
        return f"alpha={self.alpha}, gamma={self.gamma}, epsilon={self.epsilon}"
