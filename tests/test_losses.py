import pytest
import torch
from fvcore.nn import sigmoid_focal_loss as fvcore_focal_loss
from torch.nn import functional as F
from torchvision.ops import sigmoid_focal_loss as torchvision_focal_loss

from retina_plugin import CLS_LOSS_REGISTRY, FocalLoss, sigmoid_focal_loss
from retina_plugin.ops import focal_loss as focal_loss_op

# The paper's four ablation variants: (alpha, gamma).
VARIANTS = {"ce": (-1.0, 0.0), "balanced_ce": (0.75, 0.0), "fl": (-1.0, 2.0), "balanced_fl": (0.25, 2.0)}


def naive_focal_loss(logits, labels, alpha, gamma):
    """The paper's formula written directly on probabilities, float64, per element."""
    num_classes = logits.shape[-1]
    y = torch.zeros_like(logits)
    positives = (labels >= 0) & (labels < num_classes)
    y[positives, labels[positives]] = 1.0
    p = torch.sigmoid(logits.double())
    p_t = torch.where(y == 1, p, 1 - p)
    alpha_t = torch.where(y == 1, alpha, 1 - alpha) if alpha >= 0 else torch.ones_like(p)
    loss = -alpha_t * (1 - p_t) ** gamma * torch.log(p_t)
    return loss * (labels >= 0).unsqueeze(-1)


def random_problem(num_anchors=200, num_classes=5, scale=3.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(num_anchors, num_classes, generator=g) * scale).to(dtype)
    # Mostly background (label K), some positives, some ignored (-1).
    labels = torch.full((num_anchors,), num_classes, dtype=torch.long)
    pick = torch.rand(num_anchors, generator=g)
    labels[pick < 0.2] = torch.randint(0, num_classes, (int((pick < 0.2).sum()),), generator=g)
    labels[pick > 0.9] = -1
    return logits, labels


@pytest.mark.parametrize("alpha,gamma", list(VARIANTS.values()) + [(0.5, 0.5), (0.25, 3.0), (0.25, 5.0)])
def test_values_and_gradients_match_the_formula(alpha, gamma):
    logits, labels = random_problem()
    ours_in = logits.clone().requires_grad_()
    ref_in = logits.clone().requires_grad_()

    ours = sigmoid_focal_loss(ours_in, labels, alpha, gamma, reduction="none")
    ref = naive_focal_loss(ref_in, labels, alpha, gamma)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)

    weights = torch.rand_like(ref)
    (ours * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(ours_in.grad, ref_in.grad, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("alpha,gamma", [(-1.0, 0.0), (0.25, 2.0), (0.75, 0.5), (0.25, 1.0)])
def test_gradcheck(alpha, gamma):
    # gradcheck runs backward many times through one graph: the per-element output allows
    # that; the reduced ones spend their gradient (see test_reduced_gradients_...).
    logits, labels = random_problem(num_anchors=12, num_classes=3)
    logits.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: sigmoid_focal_loss(x, labels, alpha, gamma, "none"), (logits,)
    )


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_reduced_gradients_match_the_formula_and_are_spent_once(reduction):
    logits, labels = random_problem()
    ours_in = logits.clone().requires_grad_()
    ref_in = logits.clone().requires_grad_()
    ours = sigmoid_focal_loss(ours_in, labels, 0.25, 2.0, reduction)
    ref = naive_focal_loss(ref_in, labels, 0.25, 2.0).sum()
    if reduction == "mean":
        ref = ref / ((labels >= 0).sum() * logits.shape[1])
    torch.testing.assert_close(ours, ref)
    (ours * 3.0).backward(retain_graph=True)
    (ref * 3.0).backward()
    torch.testing.assert_close(ours_in.grad, ref_in.grad)
    with pytest.raises(RuntimeError, match="second backward through the same reduced loss"):
        ours.backward()


@pytest.mark.parametrize("alpha,gamma", VARIANTS.values())
@pytest.mark.parametrize("reference", [fvcore_focal_loss, torchvision_focal_loss])
@pytest.mark.parametrize("impl", ["eager", "compiled"])
def test_matches_fvcore_and_torchvision_on_one_hot_targets(alpha, gamma, reference, impl):
    logits, labels = random_problem(num_anchors=300, num_classes=4, dtype=torch.float32)
    valid = labels >= 0
    one_hot = F.one_hot(labels[valid], num_classes=5)[:, :-1].float()
    ours_in = logits.clone().requires_grad_()
    ref_in = logits.clone().requires_grad_()
    ours = sigmoid_focal_loss(ours_in, labels, alpha, gamma, reduction="sum", impl=impl)
    ref = reference(ref_in[valid], one_hot, alpha=alpha, gamma=gamma, reduction="sum")
    ours.backward()
    ref.backward()
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_in.grad, ref_in.grad, rtol=1e-5, atol=1e-6)


def test_gamma_zero_is_binary_cross_entropy():
    logits, labels = random_problem()
    valid = labels >= 0
    targets = F.one_hot(labels.clamp(min=0), num_classes=6)[:, :-1].double()
    bce = F.binary_cross_entropy_with_logits(logits[valid], targets[valid], reduction="sum")
    ours = sigmoid_focal_loss(logits, labels, alpha=-1, gamma=0.0, reduction="sum")
    torch.testing.assert_close(ours, bce)


def test_alpha_edge_cases():
    logits, labels = random_problem()
    positive = F.one_hot(labels.clamp(min=0), num_classes=6)[:, :-1].bool()
    positive &= (labels >= 0).unsqueeze(-1)
    negative = ~positive & (labels >= 0).unsqueeze(-1)

    unweighted = sigmoid_focal_loss(logits, labels, alpha=-1, gamma=2.0, reduction="none")
    only_negatives = sigmoid_focal_loss(logits, labels, alpha=0.0, gamma=2.0, reduction="none")
    only_positives = sigmoid_focal_loss(logits, labels, alpha=1.0, gamma=2.0, reduction="none")
    half = sigmoid_focal_loss(logits, labels, alpha=0.5, gamma=2.0, reduction="none")

    assert (only_negatives[positive] == 0).all() and (only_negatives[negative] > 0).all()
    assert (only_positives[negative] == 0).all() and (only_positives[positive] > 0).all()
    torch.testing.assert_close(only_negatives[negative], unweighted[negative])
    torch.testing.assert_close(only_positives[positive], unweighted[positive])
    torch.testing.assert_close(half, unweighted / 2)


def test_ignored_anchors_contribute_nothing():
    logits, labels = random_problem()
    logits.requires_grad_()
    loss = sigmoid_focal_loss(logits, labels, reduction="none")
    loss.sum().backward()
    ignored = labels < 0
    assert ignored.any()
    assert (loss[ignored] == 0).all() and (logits.grad[ignored] == 0).all()
    assert (logits.grad[~ignored] != 0).any()


def test_mean_divides_by_the_anchors_not_ignored():
    logits, labels = random_problem()
    total = sigmoid_focal_loss(logits, labels, reduction="sum")
    mean = sigmoid_focal_loss(logits, labels, reduction="mean")
    torch.testing.assert_close(mean, total / ((labels >= 0).sum() * logits.shape[1]))


@pytest.mark.parametrize("alpha,gamma", list(VARIANTS.values()) + [(0.25, 0.5), (0.25, 0.1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_logits_give_finite_values_and_gradients(alpha, gamma, dtype):
    # Every combination of (very right, very wrong) x (positive, negative) x (+-100).
    logits = torch.tensor([[100.0, -100.0], [-100.0, 100.0], [100.0, 100.0], [-100.0, -100.0]])
    logits = logits.to(dtype).requires_grad_()
    labels = torch.tensor([0, 0, 1, 2])
    loss = sigmoid_focal_loss(logits, labels, alpha, gamma, reduction="none")
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logits.grad).all()
    # A logit of 100 on its own class costs log(1 + e^-100); -100 on it costs 100 * alpha_t.
    assert 0 <= loss[0, 0] < 1e-40
    expected = 100.0 * (alpha if alpha >= 0 else 1.0)
    torch.testing.assert_close(loss[1, 0].double(), torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_logits_are_computed_in_float32(dtype):
    logits, labels = random_problem(dtype=torch.float32)
    half = logits.to(dtype).requires_grad_()
    loss = sigmoid_focal_loss(half, labels, reduction="sum")
    assert loss.dtype == torch.float32
    reference = sigmoid_focal_loss(half.detach().float(), labels, reduction="sum")
    torch.testing.assert_close(loss, reference)
    loss.backward()
    assert half.grad.dtype == dtype and torch.isfinite(half.grad.float()).all()


def test_bad_arguments_are_refused():
    logits, labels = random_problem()
    with pytest.raises(ValueError, match="reduction"):
        sigmoid_focal_loss(logits, labels, reduction="avg")
    with pytest.raises(ValueError, match="do not match logits"):
        sigmoid_focal_loss(logits, labels[:-1])


def test_focal_is_registered_and_reads_the_config(cfg):
    assert CLS_LOSS_REGISTRY.get("focal") is FocalLoss
    cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA = 0.75
    cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA = 0.0
    loss = FocalLoss(cfg)
    assert (loss.alpha, loss.gamma) == (0.75, 0.0)
    logits, labels = random_problem(dtype=torch.float32)
    torch.testing.assert_close(
        loss(logits[None], labels[None]), sigmoid_focal_loss(logits, labels, 0.75, 0.0, "sum")
    )


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_compiled_kernel_equals_eager(variant, reduction):
    alpha, gamma = VARIANTS[variant]
    logits, labels = random_problem(num_anchors=3000, num_classes=7, dtype=torch.float32)
    results = {}
    for impl in ("eager", "compiled"):
        x = logits.clone().requires_grad_()
        loss = sigmoid_focal_loss(x, labels, alpha, gamma, reduction, impl=impl)
        loss.backward(torch.rand_like(loss, generator=torch.Generator().manual_seed(0)))
        results[impl] = (loss, x.grad)
    torch.testing.assert_close(results["compiled"][0], results["eager"][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results["compiled"][1], results["eager"][1], rtol=1e-5, atol=1e-7)


def test_compiled_kernel_gradcheck_and_extreme_logits():
    logits, labels = random_problem(num_anchors=12, num_classes=3)
    logits.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: sigmoid_focal_loss(x, labels, 0.25, 0.5, "none", impl="compiled"), (logits,)
    )
    extreme = torch.tensor([[100.0, -100.0], [-100.0, 100.0]], requires_grad=True)
    loss = sigmoid_focal_loss(extreme, torch.tensor([0, 2]), 0.25, 0.5, "sum", impl="compiled")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(extreme.grad).all()


def test_eager_blocks_equal_one_block(monkeypatch):
    logits, labels = random_problem(num_anchors=500, num_classes=5)
    whole = sigmoid_focal_loss(logits, labels, reduction="none", impl="eager")
    monkeypatch.setattr(focal_loss_op, "EAGER_BLOCK_ELEMENTS", 64)  # 12 rows a block
    x = logits.clone().requires_grad_()
    blocks = sigmoid_focal_loss(x, labels, reduction="none", impl="eager")
    torch.testing.assert_close(blocks, whole)
    assert torch.autograd.gradcheck(
        lambda t: sigmoid_focal_loss(t, labels[:40], 0.25, 2.0, "none", impl="eager"),
        (logits[:40].clone().requires_grad_(),),
    )


def test_auto_compiles_large_inputs_only(monkeypatch):
    calls = []
    monkeypatch.setattr(focal_loss_op, "_compiled_kernel", lambda *a: calls.append(1) or focal_loss_op.focal_loss_kernel(*a))
    monkeypatch.setattr(focal_loss_op, "AUTO_COMPILE_ELEMENTS", 1000)
    small, small_labels = random_problem(num_anchors=10, num_classes=5)
    large, large_labels = random_problem(num_anchors=300, num_classes=5)
    sigmoid_focal_loss(small, small_labels)
    assert calls == []
    sigmoid_focal_loss(large, large_labels)
    assert calls == [1]


def test_auto_falls_back_to_eager_when_compiling_fails(monkeypatch, caplog):
    def broken(*args):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(focal_loss_op, "_compiled_kernel", broken)
    monkeypatch.setattr(focal_loss_op, "_compile_failed", False)
    monkeypatch.setattr(focal_loss_op, "AUTO_COMPILE_ELEMENTS", 0)
    logits, labels = random_problem()
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        sigmoid_focal_loss(logits, labels, impl="compiled")
    with caplog.at_level("WARNING"):
        loss = sigmoid_focal_loss(logits, labels, impl="auto")
    assert "using the eager path" in caplog.text
    torch.testing.assert_close(loss, sigmoid_focal_loss(logits, labels, impl="eager"))
