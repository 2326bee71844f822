"""
The focal-loss family after the paper (QFL, VFL, Poly-1) as fused ops, the approach of
focal_loss.py: each kernel computes its loss and its closed-form gradient in one pass, with the
(anchor, class) targets built from the integer labels, so that the gradient is the only
full-size tensor allocated (no one-hot, target or weight tensor of the whole input). Each kernel
takes x (B, K) float32+, labels (B,) and quality (B,) and returns (loss, d loss / d x), both
(B, K), zero for ignored anchors (label < 0). As for the focal loss, two implementations:
- "eager": the kernel run by plain PyTorch over blocks of anchors, so that its temporaries stay
  the size of a block; it runs everywhere and is the fallback;
- "compiled": the kernel compiled by torch.compile over the whole input (C++/OpenMP loops on
  the CPU, Triton on CUDA), its temporaries fused away, the sum in the same loop;
"auto" chooses as focal_loss.py's does (compiled from AUTO_COMPILE_ELEMENTS logits, if it works).
bench/bench_loss.py --family measures them against the plain PyTorch versions of themselves.
"""
import logging

import torch
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from .focal_loss import AUTO_COMPILE_ELEMENTS, EAGER_BLOCK_ELEMENTS, IMPLS

logger = logging.getLogger(__name__)


def _power(t, exponent):
    """t ** exponent, as products for a small whole exponent (as focal_loss.py does for gamma):
    cheaper than pow, which takes exp(exponent * log(t)) per element."""
    if float(exponent).is_integer() and 0 <= exponent <= 4:
        result = torch.ones_like(t)
        for _ in range(int(exponent)):
            result = result * t
        return result
    return t.pow(exponent)


def class_targets(x, labels, quality):
    """
    For logits x (..., K): whether each (anchor, class) is the anchor's own class; the target,
    the anchor's quality there (its IoU, ClassificationLoss.needs_quality) and 0 elsewhere (all
    0 without quality); and the (..., 1) mask of anchors that count (label >= 0).
    """
    is_target = labels.unsqueeze(-1) == torch.arange(x.shape[-1], device=x.device)
    q = torch.zeros_like(x) if quality is None else torch.where(is_target, quality.unsqueeze(-1).to(x.dtype), 0.0)
    return is_target, q, (labels >= 0).unsqueeze(-1)


def quality_focal_kernel(x, labels, quality, beta):
    """QFL = |y - p|^beta * BCE(x, y); d/dx = beta |u|^(beta-1) sign(u) p (1 - p) BCE + |u|^beta u, u = p - y."""
    _, y, valid = class_targets(x, labels, quality)
    p = torch.sigmoid(x)
    bce = F.softplus(x) - x * y
    u = p - y
    below = _power(u.abs(), beta - 1)
    scale = below * u.abs()
    loss = bce * scale
    grad = beta * below * torch.sign(u) * p * (1 - p) * bce + scale * u
    return loss * valid, grad * valid


def varifocal_kernel(x, labels, quality, alpha, gamma):
    """VFL: q (BCE(x, q)) where q > 0, alpha p^gamma softplus(x) where q = 0, and their gradients
    q (p - q) and alpha p^gamma (gamma (1 - p) softplus(x) + p)."""
    _, q, valid = class_targets(x, labels, quality)
    p = torch.sigmoid(x)
    positive = q > 0
    bce = F.softplus(x) - x * q
    p_gamma = _power(p, gamma)
    loss = torch.where(positive, q * bce, alpha * p_gamma * bce)
    grad = torch.where(positive, q * (p - q), alpha * p_gamma * (gamma * (1 - p) * bce + p))
    return loss * valid, grad * valid


def poly1_focal_kernel(x, labels, quality, alpha, gamma, epsilon):
    """
    FL + epsilon (1 - p_t)^(gamma + 1) with x_t = s x (s = 1 for the own class, -1 else):
    d/dx_t = alpha_t (1 - p_t)^gamma (gamma p_t log p_t + p_t - 1) - epsilon (gamma + 1) (1 - p_t)^(gamma + 1) p_t.
    alpha: a float (-1 for none) or a (K,) tensor.
    """
    is_target, _, valid = class_targets(x, labels, None)
    sign = torch.where(is_target, 1.0, -1.0).to(x.dtype)
    x_t = sign * x
    log_p_t = -F.softplus(-x_t)
    p_t = torch.exp(log_p_t)
    one_minus = torch.sigmoid(-x_t)
    modulating = _power(one_minus, gamma)
    if isinstance(alpha, torch.Tensor) or alpha >= 0:
        alpha = torch.as_tensor(alpha, dtype=x.dtype, device=x.device)
        alpha_t = torch.where(is_target, alpha, 1 - alpha)
    else:
        alpha_t = torch.ones((), dtype=x.dtype, device=x.device)
    poly = one_minus * modulating  # (1 - p_t)^(gamma + 1)
    loss = -alpha_t * modulating * log_p_t + epsilon * poly
    grad_t = alpha_t * modulating * (gamma * p_t * log_p_t + p_t - 1) - epsilon * (gamma + 1) * poly * p_t
    return loss * valid, sign * grad_t * valid


def _summed(kernel):
    """`kernel` returning its loss's sum: rows first, so that torch.compile keeps the reduction
    in the loop of the pointwise math (as focal_loss_kernel does)."""

    def summed_kernel(x, labels, quality, *arguments):
        loss, grad = kernel(x, labels, quality, *arguments)
        return loss.sum(dim=-1).sum(), grad

    return summed_kernel


_compiled_kernels = {}
_compile_failed = False


def _compiled(logits, labels, quality, kernel, arguments, reduction, impl, compute):
    """(loss, grad) from the compiled kernel on the logits in `compute` dtype, or None where
    "auto" should not or cannot compile (the logits are then not converted: the eager path
    converts block by block, so that float16 logits get no full-size float32 copy)."""
    global _compile_failed
    if impl == "eager" or (impl == "auto" and (_compile_failed or logits.numel() < AUTO_COMPILE_ELEMENTS)):
        return None
    key = (kernel, reduction)
    if key not in _compiled_kernels:
        _compiled_kernels[key] = torch.compile(_summed(kernel) if reduction == "sum" else kernel, dynamic=True)
    try:
        return _compiled_kernels[key](logits.to(compute), labels, quality, *arguments)
    except Exception as e:  # no compiler, an unsupported device or dtype...
        if impl == "compiled":
            raise
        _compile_failed = True
        logger.warning(f"torch.compile of {kernel.__name__} failed ({e!r}); using the eager path.")
        return None


class _FusedPairLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, quality, kernel, arguments, reduction, impl):
        shape = logits.shape
        x_all = logits.reshape(-1, shape[-1])
        labels_all = labels.reshape(-1)
        quality_all = None if quality is None else quality.reshape(-1)
        compute = torch.promote_types(logits.dtype, torch.float32)
        compiled = _compiled(x_all, labels_all, quality_all, kernel, arguments, reduction, impl, compute)
        if compiled is not None:
            result, grad = compiled
        else:
            result, grad = _eager_blocks(x_all, labels_all, quality_all, kernel, arguments, reduction, compute)
        ctx.save_for_backward(grad)
        ctx.shape, ctx.dtype, ctx.reduction = shape, logits.dtype, reduction
        return result if reduction == "sum" else result.reshape(shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        (grad,) = ctx.saved_tensors
        scale = grad_loss if ctx.reduction == "sum" else grad_loss.reshape(grad.shape)
        return (grad * scale).reshape(ctx.shape).to(ctx.dtype), None, None, None, None, None, None


def _eager_blocks(x_all, labels_all, quality_all, kernel, arguments, reduction, compute):
    """The kernel over blocks of rows: temporaries of a block, not of the whole input."""
    grad = torch.empty(x_all.shape, dtype=compute, device=x_all.device)
    per_element = torch.empty_like(grad) if reduction == "none" else None
    total = torch.zeros((), dtype=compute, device=x_all.device)
    rows = max(1, EAGER_BLOCK_ELEMENTS // max(1, x_all.shape[-1]))
    for start in range(0, x_all.shape[0], rows):
        block = slice(start, start + rows)
        q = None if quality_all is None else quality_all[block]
        loss, grad[block] = kernel(x_all[block].to(compute), labels_all[block], q, *arguments)
        if per_element is None:
            total = total + loss.sum()
        else:
            per_element[block] = loss
    return (total if per_element is None else per_element), grad


def fused_pair_loss(kernel, logits, labels, quality=None, arguments=(), reduction="sum", impl="auto"):
    """Sum (or, with reduction "none", the per-pair values) of `kernel` over all (anchor, class)
    pairs with its closed-form gradient; `impl` "auto", "compiled" or "eager" (see above)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, not {impl!r}")
    return _FusedPairLoss.apply(logits, labels, quality, kernel, tuple(arguments), reduction, impl)
