import math

import torch
from torch.nn import functional as F

from detectron2.config import configurable

from ..config import check_config_value
from .build import CLS_LOSS_REGISTRY, ClassificationLoss
from .focal import alpha_from_config, check_alpha


def softmax_focal_loss(logits, labels, alpha=0.25, gamma=2.0):
    """
    Softmax focal loss over K + 1 classes, the last (index K) background, summed over anchors:

        p = softmax(x),  p_t = p[label]
        FL = -alpha_t * (1 - p_t) ** gamma * log(p_t)

    alpha_t is alpha for an object anchor and 1 - alpha for a background one, or 1 when alpha
    is -1. From log_softmax: 1 - p_t = -expm1(log(p_t)) keeps its precision near p_t = 1.

    Args:
        logits: (..., K + 1) float tensor.
        labels: (...) integer: a class in [0, K), K (or more) for background, negative for an
            ignored anchor, which contributes nothing.
    """
    background = logits.shape[-1] - 1
    log_p = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    target = labels.clamp(min=0, max=background)
    log_p_t = log_p.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    loss = -log_p_t
    if gamma != 0:
        # (1 - p_t) ** gamma, floored so that its gradient stays finite at p_t = 1.
        one_minus_p_t = (-torch.expm1(log_p_t)).clamp(min=torch.finfo(log_p_t.dtype).tiny)
        loss = loss * one_minus_p_t**gamma
    if alpha >= 0:
        loss = loss * torch.where(target == background, 1.0 - alpha, alpha)
    return (loss * (labels >= 0)).sum()


@CLS_LOSS_REGISTRY.register_as("softmax_focal")
class SoftmaxFocalLoss(ClassificationLoss):
    """
    A softmax focal loss (FOCAL_LOSS_ALPHA, FOCAL_LOSS_GAMMA, one alpha for all classes): the
    head predicts K + 1 logits per anchor, background last, and an anchor's class scores are
    its softmax probabilities of the K object classes.
    """

    @configurable
    def __init__(self, *, alpha: float = 0.25, gamma: float = 2.0):
        super().__init__()
        self.check_values(check_config_value, alpha, gamma)
        self.alpha = float(alpha)
        self.gamma = float(gamma)

    @staticmethod
    def check_values(check, alpha, gamma):
        check_alpha(check, alpha, per_class=False)
        check(gamma >= 0, "MODEL.RETINANET.FOCAL_LOSS_GAMMA", gamma, "use gamma >= 0 (0 is CE)")

    @classmethod
    def from_config(cls, cfg):
        return {"alpha": alpha_from_config(cfg), "gamma": cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA}

    def logits_per_anchor(self, num_classes):
        return num_classes + 1

    def prior_bias(self, num_classes, prior_prob):
        # Background starts at 1 - prior_prob, each of the K classes at prior_prob / K.
        bias = torch.zeros(num_classes + 1)
        bias[num_classes] = math.log(num_classes * (1 - prior_prob) / prior_prob)
        return bias

    def class_scores(self, logits):
        return logits.softmax(dim=-1)[..., :-1]

    def forward(self, pred_logits, gt_labels, anchors=None, quality=None):
        return softmax_focal_loss(pred_logits, gt_labels, self.alpha, self.gamma)

    def extra_repr(self):
        return f"alpha={self.alpha}, gamma={self.gamma}"
