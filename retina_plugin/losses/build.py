import math

import torch
from torch import nn

from ..registry import NamedRegistry

CLS_LOSS_REGISTRY = NamedRegistry("CLS_LOSS")
CLS_LOSS_REGISTRY.__doc__ = """
Registry for RetinaNet classification losses, selected by MODEL.RETINANET.CLS_LOSS_TYPE.

A registered object is called as `obj(cfg)` and returns a ClassificationLoss: a module called
as `loss(pred_logits, gt_labels, anchors)` (and `quality=` when it asks for it) with pred_logits (N, R, C) over all R
anchors of all levels (C = loss.logits_per_anchor(K), K classes), gt_labels (N, R) integer (a
class in [0, K), K for background, -1 for ignored anchors), anchors (R, 4), the anchors' boxes
(XYXY), and, for a loss whose `needs_quality` is True, quality (N, R): each positive anchor's
IoU between its predicted box (detached) and its ground-truth box, 0 elsewhere.
It returns the loss summed over anchors; the meta-architecture divides by the normaliser.
An optional classmethod `check_config(cfg, check)` reports bad keys before anything is built.
"""


def build_cls_loss(cfg):
    """Build the classification loss named by cfg.MODEL.RETINANET.CLS_LOSS_TYPE."""
    name = cfg.MODEL.RETINANET.CLS_LOSS_TYPE
    return CLS_LOSS_REGISTRY.get_by_config("MODEL.RETINANET.CLS_LOSS_TYPE", name)(cfg)


class ClassificationLoss(nn.Module):
    """
    The base of the registered losses: what the head's class logits mean. Its defaults are
    the paper's sigmoid ones: K logits per anchor, class score sigmoid(x), and a class bias
    that starts every score at the prior probability pi. A loss with other logits (a softmax
    over K + 1, FL*'s scaled sigmoid) overrides the three methods below.
    """

    # Whether the loss is a sum of per-anchor terms, so that the loss of a subset of anchors
    # (the object anchors, for the cls_loss_background_share metric) is that subset's share.
    separable_over_anchors = True
    # Whether forward needs `quality`, the IoU of each positive anchor's predicted box with its
    # ground truth (the IoU-aware losses): FocalRetinaNet computes it only for such losses.
    needs_quality = False
    # Whether the loss is a mean already (GHM-C's 1 / N), not a sum the model divides by its
    # loss normaliser.
    normalized_by_itself = False

    @classmethod
    def check_config(cls, cfg, check):
        """
        Call check(ok, key, value, allowed) for each key the loss reads (see
        config.check_config_value): by default its check_values on its from_config arguments.
        """
        if hasattr(cls, "check_values"):
            cls.check_values(check, **cls.from_config(cfg))

    def logits_per_anchor(self, num_classes: int) -> int:
        """How many logits the head predicts per anchor."""
        return num_classes

    def prior_bias(self, num_classes: int, prior_prob: float) -> torch.Tensor:
        """
        The class logits' initial biases, (logits_per_anchor,): each class's score starts at
        prior_prob, so that the many background anchors do not swamp the first iterations.
        """
        return torch.full((num_classes,), -math.log((1 - prior_prob) / prior_prob))

    def class_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """(..., logits_per_anchor) logits -> (..., K) per-class scores in [0, 1] for inference."""
        return logits.sigmoid()
