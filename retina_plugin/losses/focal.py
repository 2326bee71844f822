import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from detectron2.config import configurable

from ..config import check_config_value
from .build import CLS_LOSS_REGISTRY


def sigmoid_focal_loss(logits, labels, alpha: float = 0.25, gamma: float = 2.0, reduction="sum"):
    """
    Sigmoid focal loss of Lin et al., "Focal Loss for Dense Object Detection", on integer labels.

        p_t = sigmoid(x_t),   x_t = x if the anchor's label is this class else -x
        FL  = -alpha_t * (1 - p_t) ** gamma * log(p_t)

    alpha_t is `alpha` for the anchor's own class and `1 - alpha` for the other classes, or 1
    when alpha < 0 (no balancing). gamma = 0 is (balanced) binary cross-entropy.

    Everything is computed from log-sigmoids, (1 - p_t) ** gamma as exp(gamma * log(1 - p_t)),
    so logits of any size give finite values and gradients, for any gamma >= 0. The math runs
    in float32 for float16/bfloat16 logits (float64 stays float64). The gradient (appendix B),

        dFL/dx_t = alpha_t * (1 - p_t) ** gamma * (gamma * p_t * log(p_t) + p_t - 1),

    is computed in backward from the saved logits and labels: no one-hot target and no
    intermediate of the forward pass is kept for it.

    Args:
        logits: (..., K) float tensor of class logits, K foreground classes.
        labels: (...) integer tensor: a class in [0, K); K (or any value >= K) for background,
            whose every class is a negative; -1 (any negative value) for an ignored anchor,
            which contributes nothing.
        alpha: weight of the positive term in [0, 1], or -1 for none.
        gamma: focusing exponent, >= 0.
        reduction: "none": (..., K) losses in that math's dtype, 0 for ignored anchors;
            "sum": their sum; "mean": their sum / (K * the number of anchors not ignored).
    """
    if reduction not in ("none", "sum", "mean"):
        raise ValueError(f"reduction must be 'none', 'sum' or 'mean', not {reduction!r}")
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"labels of shape {tuple(labels.shape)} do not match logits of shape "
            f"{tuple(logits.shape)}: expected labels of shape {tuple(logits.shape[:-1])}"
        )
    loss = _SigmoidFocalLoss.apply(logits, labels, float(alpha), float(gamma))
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "mean":
        num_valid = (labels >= 0).sum() * logits.shape[-1]
        total = total / num_valid.clamp(min=1)
    return total


def _focal_terms(logits, labels, alpha, gamma):
    """Per-element pieces shared by forward and backward, in at least float32, shape (..., K)."""
    num_classes = logits.shape[-1]
    classes = torch.arange(num_classes, device=logits.device)
    is_target = labels.unsqueeze(-1) == classes
    # At least float32: half-precision logits are computed in float32, float64 stays float64.
    x = logits.to(torch.promote_types(logits.dtype, torch.float32))
    x_t = torch.where(is_target, x, -x)
    log_p_t = F.logsigmoid(x_t)
    # (1 - p_t) ** gamma without pow's infinite gradient at 0 for gamma < 1.
    modulator = torch.exp(gamma * F.logsigmoid(-x_t)) if gamma != 0 else torch.ones_like(x_t)
    if alpha >= 0:
        alpha_t = torch.where(is_target, alpha, 1.0 - alpha)
    else:
        alpha_t = torch.ones_like(x_t)
    alpha_t = alpha_t * (labels >= 0).unsqueeze(-1)  # ignored anchors weigh nothing
    return is_target, log_p_t, modulator, alpha_t


class _SigmoidFocalLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, alpha, gamma):
        _, log_p_t, modulator, alpha_t = _focal_terms(logits, labels, alpha, gamma)
        ctx.save_for_backward(logits, labels)
        ctx.alpha, ctx.gamma = alpha, gamma
        return -alpha_t * modulator * log_p_t

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        logits, labels = ctx.saved_tensors
        is_target, log_p_t, modulator, alpha_t = _focal_terms(logits, labels, ctx.alpha, ctx.gamma)
        p_t = log_p_t.exp()
        grad_x_t = alpha_t * modulator * (ctx.gamma * p_t * log_p_t + p_t - 1.0)
        grad_x = torch.where(is_target, grad_x_t, -grad_x_t)
        return (grad_x * grad_loss).to(logits.dtype), None, None, None


@CLS_LOSS_REGISTRY.register_as("focal")
class FocalLoss(nn.Module):
    """
    The paper's classification loss, summed over all anchors that are not ignored.
    The paper's ablation variants are alpha/gamma settings (configs/losses/):
    CE (alpha -1, gamma 0), balanced CE (0.75, 0), FL (-1, 2), balanced FL (0.25, 2).
    """

    @configurable
    def __init__(self, *, alpha: float = 0.25, gamma: float = 2.0):
        super().__init__()
        check_config_value(
            alpha == -1 or 0 <= alpha <= 1,
            "MODEL.RETINANET.FOCAL_LOSS_ALPHA",
            alpha,
            "use a weight in [0, 1], or -1 for no balancing",
        )
        check_config_value(
            gamma >= 0, "MODEL.RETINANET.FOCAL_LOSS_GAMMA", gamma, "use gamma >= 0 (0 is CE)"
        )
        self.alpha = float(alpha)
        self.gamma = float(gamma)

    @classmethod
    def from_config(cls, cfg):
        return {
            "alpha": cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA,
            "gamma": cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA,
        }

    def forward(self, pred_logits, gt_labels):
        """pred_logits (N, R, K), gt_labels (N, R) -> the loss summed over anchors."""
        return sigmoid_focal_loss(pred_logits, gt_labels, self.alpha, self.gamma, "sum")

    def extra_repr(self):
        return f"alpha={self.alpha}, gamma={self.gamma}"
