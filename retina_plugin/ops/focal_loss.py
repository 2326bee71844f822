"""
The sigmoid focal loss as one fused op on integer labels: loss and gradient in one pass over
the logits, with the gradient the only full-size tensor it allocates.

Two implementations of the same formula:
- "compiled": the kernel below compiled by torch.compile (C++/OpenMP loops on the CPU, Triton
  on CUDA), one fused loop over the logits;
- "eager": the same kernel run by plain PyTorch over blocks of rows, so that its temporaries
  stay the size of a block. It runs everywhere and is the fallback.
"auto" (the default) uses "compiled" for inputs of at least AUTO_COMPILE_ELEMENTS logits where
torch.compile works, and "eager" otherwise: below that size a compile (seconds, once per
process) costs more than it saves.
"""
import logging

import torch
from torch.autograd.function import once_differentiable

logger = logging.getLogger(__name__)

IMPLS = ("auto", "compiled", "eager")
# Logits per block of the eager path: a few hundred KB of temporaries, cache-sized.
EAGER_BLOCK_ELEMENTS = 1 << 16
AUTO_COMPILE_ELEMENTS = 1 << 20


def sigmoid_focal_loss(
    logits, labels, alpha: float = 0.25, gamma: float = 2.0, reduction="sum", impl="auto"
):
    """
    Sigmoid focal loss of Lin et al., "Focal Loss for Dense Object Detection", on integer labels.

        p_t = sigmoid(x_t),   x_t = x if the anchor's label is this class else -x
        FL  = -alpha_t * (1 - p_t) ** gamma * log(p_t)

    alpha_t is `alpha` for the anchor's own class and `1 - alpha` for the other classes, or 1
    when alpha < 0 (no balancing); with one alpha per class, class k's term uses alpha[k].
    gamma = 0 is (balanced) binary cross-entropy.

    Everything is computed from log-sigmoids: log(p_t) = -softplus(-x_t),
    log(1 - p_t) = log(p_t) - x_t, (1 - p_t) ** gamma = exp(gamma * log(1 - p_t)), so logits
    of any size give finite values and gradients, for any gamma >= 0. The math runs in float32
    for float16/bfloat16 logits (float64 stays float64). The gradient (the paper's appendix B),

        dFL/dx_t = alpha_t * (1 - p_t) ** gamma * (gamma * p_t * log(p_t) + p_t - 1),

    is computed in the same pass as the loss and kept for backward; nothing else full-size is.
    Backward spends it: a second backward through the same loss (retain_graph) is an error.

    Args:
        logits: (..., K) float tensor of class logits, K foreground classes.
        labels: (...) integer tensor: a class in [0, K); K (or any value >= K) for background,
            whose every class is a negative; -1 (any negative value) for an ignored anchor,
            which contributes nothing.
        alpha: weight of the positive term in [0, 1], or -1 for none; or a sequence of K
            such weights, one per class.
        gamma: focusing exponent, >= 0.
        reduction: "none": (..., K) losses in that math's dtype, 0 for ignored anchors;
            "sum": their sum; "mean": their sum / (K * the number of anchors not ignored).
        impl: "auto", "compiled" or "eager" (see the module's docstring).
    """
    if reduction not in ("none", "sum", "mean"):
        raise ValueError(f"reduction must be 'none', 'sum' or 'mean', not {reduction!r}")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, not {impl!r}")
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"labels of shape {tuple(labels.shape)} do not match logits of shape "
            f"{tuple(logits.shape)}: expected labels of shape {tuple(logits.shape[:-1])}"
        )
    if isinstance(alpha, (int, float)):
        alpha = float(alpha)
    else:
        alpha = tuple(float(a) for a in alpha)
        if len(alpha) != logits.shape[-1]:
            raise ValueError(
                f"{len(alpha)} per-class alphas for {logits.shape[-1]} classes: give one per class"
            )
    return _SigmoidFocalLoss.apply(logits, labels, alpha, float(gamma), reduction, impl)


def focal_loss_kernel(logits, labels, alpha, gamma, balanced, focusing, per_element, need_grad):
    """
    (loss, grad) of rows of logits (M, K) with labels (M,): loss is (M, K) if `per_element`,
    else its sum (0-d); grad is dloss/dlogits (M, K) in the logits' dtype, or None.
    alpha and gamma are numbers or 0-d tensors (so that a compiled kernel serves all values),
    alpha may also be a (K,) tensor of per-class weights; `balanced` (alpha given) and
    `focusing` choose the branches: 0 for gamma 0, a whole gamma up to 4 as itself, else -1.
    Pointwise ops and one sum only, so that torch.compile fuses it into one loop.
    """
    classes = torch.arange(logits.shape[-1], device=logits.device)
    is_target = labels.unsqueeze(-1) == classes
    x = logits.to(torch.promote_types(logits.dtype, torch.float32))
    x_t = torch.where(is_target, x, -x)
    # p_t and 1 - p_t from one exp, each without cancellation: with e = exp(-|x_t|),
    # sigmoid(x_t) is 1 / (1 + e) for x_t >= 0 and e / (1 + e) otherwise.
    e = torch.exp(-x_t.abs())
    inv = 1.0 / (1.0 + e)
    positive = x_t >= 0
    p_t = torch.where(positive, inv, e * inv)
    q_t = torch.where(positive, e * inv, inv)  # 1 - p_t
    log_p_t = -(torch.clamp(-x_t, min=0) + torch.log1p(e))
    if focusing > 0:
        # A whole gamma (2, the paper's) as products of 1 - p_t: one transcendental fewer
        # per logit than the general power below.
        modulator = q_t
        for _ in range(focusing - 1):
            modulator = modulator * q_t
    elif focusing < 0:
        # (1 - p_t) ** gamma = exp(gamma * log(1 - p_t)), log(1 - p_t) = log(p_t) - x_t.
        modulator = torch.exp(gamma * (log_p_t - x_t))
    else:
        modulator = 1.0
    if balanced:
        weight = torch.where(is_target, alpha, 1.0 - alpha)
    else:
        weight = torch.ones_like(x_t)
    weight = weight * (labels >= 0).unsqueeze(-1)  # ignored anchors weigh nothing
    weighted = weight * modulator
    loss = -weighted * log_p_t
    if not per_element:
        # Rows first: a reduction in the same loop nest as the pointwise math, which
        # torch.compile fuses; a flat sum would make it store the loss's terms first.
        loss = loss.sum(dim=-1).sum()
    grad = None
    if need_grad:
        grad_t = weighted * (gamma * p_t * log_p_t - q_t)
        grad = torch.where(is_target, grad_t, -grad_t).to(logits.dtype)
    return loss, grad


def _eager_blocks(logits, labels, alpha, gamma, flags):
    """focal_loss_kernel over blocks of rows: temporaries of a block, not of the whole input."""
    per_element, need_grad = flags[2:]
    rows = max(1, EAGER_BLOCK_ELEMENTS // max(1, logits.shape[-1]))
    if logits.shape[0] <= rows:
        return focal_loss_kernel(logits, labels, alpha, gamma, *flags)
    compute_dtype = torch.promote_types(logits.dtype, torch.float32)
    loss = torch.empty(logits.shape, dtype=compute_dtype, device=logits.device) if per_element else 0
    grad = torch.empty_like(logits) if need_grad else None
    for start in range(0, logits.shape[0], rows):
        block = slice(start, start + rows)
        block_loss, block_grad = focal_loss_kernel(logits[block], labels[block], alpha, gamma, *flags)
        if per_element:
            loss[block] = block_loss
        else:
            loss = loss + block_loss
        if need_grad:
            grad[block] = block_grad
    return loss, grad


_compiled_kernel = None
_compile_failed = False


def _run_kernel(logits, labels, alpha, gamma, per_element, need_grad, impl):
    global _compiled_kernel, _compile_failed
    per_class = isinstance(alpha, tuple)
    focusing = int(gamma) if gamma in (1.0, 2.0, 3.0, 4.0) else (0 if gamma == 0 else -1)
    flags = (per_class or alpha >= 0, focusing, per_element, need_grad)
    compute_dtype = torch.promote_types(logits.dtype, torch.float32)
    if per_class:
        alpha = torch.tensor(alpha, dtype=compute_dtype, device=logits.device)
    small = logits.numel() < AUTO_COMPILE_ELEMENTS
    if impl == "eager" or (impl == "auto" and (_compile_failed or small)):
        return _eager_blocks(logits, labels, alpha, gamma, flags)
    if _compiled_kernel is None:
        _compiled_kernel = torch.compile(focal_loss_kernel, dynamic=True)
    if not per_class:
        alpha = torch.tensor(alpha, dtype=compute_dtype, device=logits.device)
    gamma_t = torch.tensor(gamma, dtype=compute_dtype, device=logits.device)
    try:
        return _compiled_kernel(logits, labels, alpha, gamma_t, *flags)
    except Exception as e:  # no compiler, an unsupported device or dtype...
        if impl == "compiled":
            raise
        _compile_failed = True
        logger.warning(f"torch.compile of the focal loss failed ({e!r}); using the eager path.")
        return _eager_blocks(logits, labels, alpha, gamma, flags)


class _SigmoidFocalLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, alpha, gamma, reduction, impl):
        num_classes = logits.shape[-1]
        flat_logits = logits.reshape(-1, num_classes)
        flat_labels = labels.reshape(-1)
        need_grad = ctx.needs_input_grad[0]
        loss, grad = _run_kernel(
            flat_logits, flat_labels, alpha, gamma, reduction == "none", need_grad, impl
        )
        if reduction == "none":
            loss = loss.view(logits.shape)
        elif reduction == "mean":
            count = max(1, int((flat_labels >= 0).sum()) * num_classes)
            loss = loss / count
            if need_grad:
                grad.div_(count)
        # Neither an input nor an output, so held on ctx (save_for_backward is for those).
        ctx.grad = grad.view(logits.shape) if need_grad else None
        ctx.reduced = reduction != "none"
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        if not ctx.reduced:
            return (ctx.grad * grad_loss).to(ctx.grad.dtype), None, None, None, None, None
        # A scalar loss: scale the gradient in place rather than allocate another full-size
        # tensor. It is then spent, so a second backward cannot reuse it.
        grad, ctx.grad = ctx.grad, None
        if grad is None:
            raise RuntimeError(
                "sigmoid_focal_loss: a second backward through the same reduced loss "
                "(retain_graph=True) is not supported; compute the loss again instead."
            )
        return grad.mul_(grad_loss.to(grad.dtype)), None, None, None, None, None
