import torch
from torch.nn import functional as F

from detectron2.config import configurable

from ..config import check_config_value
from .build import CLS_LOSS_REGISTRY, ClassificationLoss


def ghm_c_loss(logits, labels, bins=30, momentum=0.75, accumulated=None):
    """
    GHM-C of Li et al., "Gradient Harmonized Single-stage Detector" (AAAI 2019):

        g     = |sigmoid(x) - y|, the norm of CE's gradient, per (anchor, class) pair
        GD(g) = the number of pairs whose g falls in g's bin, of `bins` equal bins over [0, 1]
                (with momentum > 0: its moving average over iterations, in `accumulated`)
        beta  = N / GD(g) / (number of non-empty bins),   N = the pairs that count
        GHM-C = (1 / N) * sum(beta * CE(x, y))

    Pairs of a crowded gradient norm (the many easy negatives, and outliers) weigh less. The
    weights carry no gradient. Labels as sigmoid_focal_loss's (K background, -1 ignored).
    `accumulated` (bins,) is updated in place; None to use this batch's counts alone.
    """
    x = logits.to(torch.promote_types(logits.dtype, torch.float32))
    target = (labels.unsqueeze(-1) == torch.arange(x.shape[-1], device=x.device)).to(x.dtype)
    valid = (labels >= 0).unsqueeze(-1).expand_as(x)
    total = valid.sum()
    if total == 0:
        return x.sum() * 0
    with torch.no_grad():
        g = (torch.sigmoid(x) - target).abs()
        index = (g * bins).long().clamp(max=bins - 1)  # bin i holds [i / bins, (i + 1) / bins)
        counts = torch.bincount(index[valid], minlength=bins).to(x.dtype)
        if accumulated is not None and momentum > 0:
            filled = counts > 0
            accumulated[filled] = momentum * accumulated[filled] + (1 - momentum) * counts[filled]
            density = accumulated.to(x.dtype)
        else:
            density = counts
        weight_per_bin = torch.where(counts > 0, total / density.clamp(min=1e-12), torch.zeros_like(density))
        weight_per_bin = weight_per_bin / (counts > 0).sum()
        weight = weight_per_bin[index] * valid
    loss = F.binary_cross_entropy_with_logits(x, target, reduction="none")
    return (loss * weight).sum() / total


@CLS_LOSS_REGISTRY.register_as("ghm_c")
class GHMCLoss(ClassificationLoss):
    """
    GHM-C: MODEL.RETINANET.GHM_C.BINS and .MOMENTUM. It is a mean over the (anchor, class) pairs
    already (the paper's 1 / N), so it is not divided by the loss normaliser; its moving average
    of the gradient density is saved with the normaliser's state, so --resume stays exact.
    """

    normalized_by_itself = True
    separable_over_anchors = False  # its weights depend on every pair of the batch

    @configurable
    def __init__(self, *, bins: int = 30, momentum: float = 0.75):
        super().__init__()
        self.check_values(check_config_value, bins, momentum)
        self.bins, self.momentum = int(bins), float(momentum)
        # Not in the model's state_dict (detectron2 RetinaNet checkpoints load key for key):
        # checkpointed through FocalRetinaNet.normalizer_checkpointable().
        self.register_buffer("accumulated", torch.zeros(self.bins), persistent=False)

    @staticmethod
    def check_values(check, bins, momentum):
        check(isinstance(bins, int) and bins >= 1, "MODEL.RETINANET.GHM_C.BINS", bins, "use a whole number >= 1 (the paper: 30)")
        number = isinstance(momentum, (int, float)) and not isinstance(momentum, bool)
        check(number and 0 <= momentum < 1, "MODEL.RETINANET.GHM_C.MOMENTUM", momentum, "use a momentum in [0, 1) (the paper: 0.75)")

    @classmethod
    def from_config(cls, cfg):
        return {"bins": cfg.MODEL.RETINANET.GHM_C.BINS, "momentum": cfg.MODEL.RETINANET.GHM_C.MOMENTUM}

    def forward(self, pred_logits, gt_labels, anchors=None, quality=None):
        # Only training updates the moving density; a loss computed for a metric does not.
        accumulated = self.accumulated if self.training and torch.is_grad_enabled() else self.accumulated.clone()
        return ghm_c_loss(pred_logits, gt_labels, self.bins, self.momentum, accumulated)

    def loss_state_dict(self):
        return {"ghm_c_accumulated": self.accumulated.tolist()}

    def load_loss_state_dict(self, state):
        if state.get("ghm_c_accumulated") is not None:
            self.accumulated.copy_(torch.tensor(state["ghm_c_accumulated"]))

    def extra_repr(self):
        return f"bins={self.bins}, momentum={self.momentum}"
