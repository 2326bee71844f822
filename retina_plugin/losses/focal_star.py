import math

import torch
from torch.nn import functional as F

from detectron2.config import configurable

from ..config import check_config_value
from .build import CLS_LOSS_REGISTRY, ClassificationLoss
from .focal import alpha_from_config, as_alpha, check_alpha


def sigmoid_focal_star_loss(logits, labels, alpha=0.25, gamma=2.0, beta=1.0):
    """
    FL* of the paper's appendix A, summed: another loss that focuses on hard examples.

        x_t = x if the anchor's label is this class else -x
        p*_t = sigmoid(gamma * x_t + beta)
        FL* = -alpha_t * log(p*_t) / gamma = alpha_t * softplus(-(gamma * x_t + beta)) / gamma

    alpha_t as in the focal loss (alpha for the own class, 1 - alpha for the others, 1 when
    alpha is -1; a sequence gives one alpha per class). Labels as sigmoid_focal_loss's: a class
    in [0, K), K (or more) for background, negative for ignored anchors.
    """
    num_classes = logits.shape[-1]
    is_target = labels.unsqueeze(-1) == torch.arange(num_classes, device=logits.device)
    x = logits.to(torch.promote_types(logits.dtype, torch.float32))
    x_t = torch.where(is_target, x, -x)
    loss = F.softplus(-(gamma * x_t + beta)) / gamma
    if not isinstance(alpha, (int, float)) or alpha >= 0:
        alpha = torch.as_tensor(alpha, dtype=x.dtype, device=x.device)
        loss = loss * torch.where(is_target, alpha, 1 - alpha)
    return (loss * (labels >= 0).unsqueeze(-1)).sum()


@CLS_LOSS_REGISTRY.register_as("focal_star")
class FocalStarLoss(ClassificationLoss):
    """
    FL* (appendix A): MODEL.RETINANET.FOCAL_STAR.GAMMA and .BETA, and FOCAL_LOSS_ALPHA.
    Its class score is p* = sigmoid(gamma * x + beta), the probability the loss trains.
    """

    @configurable
    def __init__(self, *, alpha=0.25, gamma: float = 2.0, beta: float = 1.0, num_classes=None):
        super().__init__()
        self.check_values(check_config_value, alpha, gamma, beta, num_classes)
        self.alpha = as_alpha(alpha)
        self.gamma = float(gamma)
        self.beta = float(beta)

    @staticmethod
    def check_values(check, alpha, gamma, beta, num_classes):
        check_alpha(check, alpha, num_classes)
        check(
            gamma > 0,
            "MODEL.RETINANET.FOCAL_STAR.GAMMA",
            gamma,
            "use gamma > 0 (FL* divides by it; the paper: 2 or 4)",
        )
        check(math.isfinite(beta), "MODEL.RETINANET.FOCAL_STAR.BETA", beta, "use a finite number")

    @classmethod
    def from_config(cls, cfg):
        return {
            "alpha": alpha_from_config(cfg),
            "gamma": cfg.MODEL.RETINANET.FOCAL_STAR.GAMMA,
            "beta": cfg.MODEL.RETINANET.FOCAL_STAR.BETA,
            "num_classes": cfg.MODEL.RETINANET.NUM_CLASSES,
        }

    def prior_bias(self, num_classes, prior_prob):
        # sigmoid(gamma * b + beta) = prior_prob
        logit = math.log(prior_prob / (1 - prior_prob))
        return torch.full((num_classes,), (logit - self.beta) / self.gamma)

    def class_scores(self, logits):
        return torch.sigmoid(self.gamma * logits + self.beta)

    def forward(self, pred_logits, gt_labels, anchors=None, quality=None):
        return sigmoid_focal_star_loss(pred_logits, gt_labels, self.alpha, self.gamma, self.beta)

    def extra_repr(self):
        return f"alpha={self.alpha}, gamma={self.gamma}, beta={self.beta}"
