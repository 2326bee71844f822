"""The focal-loss family after the paper (QFL, VFL, Poly-1) against their papers' formulas in
float64, and the quality target FocalRetinaNet gives the IoU-aware losses."""
import math

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.structures import Boxes, pairwise_iou

import retina_plugin
from retina_plugin import ConfigValueError
from retina_plugin.losses import poly1_focal_loss, quality_focal_loss, varifocal_loss

from helpers import tiny_batch, tiny_cfg, train_step

K = 4


def inputs(seed=0, n=2, r=40, dtype=torch.float64, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, r, K, generator=g, dtype=dtype) * scale).requires_grad_()
    labels = torch.randint(-1, K + 1, (n, r), generator=g)  # -1 ignored, K background
    quality = torch.rand(n, r, generator=g, dtype=dtype) * (labels >= 0) * (labels < K)
    return logits, labels, quality


def direct(logits, labels, quality, pair_loss):
    """Sum over (anchor, class) of pair_loss(x, y, q): y 1 for the anchor's class, q its quality."""
    total = logits.new_zeros(())
    for i in range(logits.shape[0]):
        for j in range(logits.shape[1]):
            if labels[i, j] < 0:
                continue
            for k in range(K):
                y = 1.0 if labels[i, j] == k else 0.0
                total = total + pair_loss(logits[i, j, k], y, quality[i, j] * y)
    return total


def qfl_pair(x, y, q, beta=2.0):
    p = torch.sigmoid(x)
    return -abs(q - p) ** beta * ((1 - q) * torch.log(1 - p) + q * torch.log(p))


def vfl_pair(x, y, q, alpha=0.75, gamma=2.0):
    p = torch.sigmoid(x)
    if q > 0:
        return -q * (q * torch.log(p) + (1 - q) * torch.log(1 - p))
    return -alpha * p**gamma * torch.log(1 - p)


def poly1_pair(x, y, q, alpha=0.25, gamma=2.0, epsilon=1.0):
    p = torch.sigmoid(x)
    p_t = p if y else 1 - p
    alpha_t = alpha if y else 1 - alpha
    return -alpha_t * (1 - p_t) ** gamma * torch.log(p_t) + epsilon * (1 - p_t) ** (gamma + 1)


CASES = [
    ("qfl", lambda x, l, q: quality_focal_loss(x, l, q, beta=2.0), qfl_pair),
    ("qfl beta 1.5", lambda x, l, q: quality_focal_loss(x, l, q, beta=1.5), lambda x, y, q: qfl_pair(x, y, q, 1.5)),
    ("vfl", lambda x, l, q: varifocal_loss(x, l, q, 0.75, 2.0), vfl_pair),
    ("vfl 0.5, 1", lambda x, l, q: varifocal_loss(x, l, q, 0.5, 1.0), lambda x, y, q: vfl_pair(x, y, q, 0.5, 1.0)),
    ("poly1", lambda x, l, q: poly1_focal_loss(x, l, 0.25, 2.0, 1.0), poly1_pair),
    ("poly1 eps -1", lambda x, l, q: poly1_focal_loss(x, l, 0.25, 2.0, -1.0), lambda x, y, q: poly1_pair(x, y, q, epsilon=-1.0)),
]


@pytest.mark.parametrize("name, ours, pair", CASES, ids=[c[0] for c in CASES])
def test_values_and_gradients_match_the_papers_formula(name, ours, pair):
    logits, labels, quality = inputs(scale=2.0)
    value = ours(logits, labels, quality)
    (grad,) = torch.autograd.grad(value, logits)
    reference = direct(logits, labels, quality, pair)
    (reference_grad,) = torch.autograd.grad(reference, logits)
    assert value.item() == pytest.approx(reference.item(), rel=1e-10)
    assert torch.allclose(grad, reference_grad, rtol=1e-8, atol=1e-12)
    # Ignored anchors give neither loss nor gradient.
    assert torch.all(grad[labels < 0] == 0)


@pytest.mark.parametrize("name, ours, pair", CASES, ids=[c[0] for c in CASES])
def test_gradcheck_and_extreme_logits(name, ours, pair):
    logits, labels, quality = inputs(n=1, r=6, seed=3, scale=1.0)
    if name.startswith("poly1"):  # its fused focal part spends its gradient when reduced
        epsilon = -1.0 if "-1" in name else 1.0
        ours_unreduced = lambda x, l, q: poly1_focal_loss(x, l, 0.25, 2.0, epsilon, reduction="none")  # noqa: E731
        assert torch.autograd.gradcheck(lambda x: ours_unreduced(x, labels, quality), (logits,))
    else:
        assert torch.autograd.gradcheck(lambda x: ours(x, labels, quality), (logits,))
    extreme = (torch.tensor([-200.0, -30.0, 30.0, 200.0]).repeat(1, 6, 1)).requires_grad_()
    value = ours(extreme, labels, quality.float())
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(extreme.grad).all()


def test_poly1_takes_per_class_alpha():
    logits, labels, quality = inputs()
    alpha = (0.1, 0.2, 0.3, 0.4)
    value = poly1_focal_loss(logits, labels, alpha, 2.0, 1.0)
    total = logits.new_zeros(())
    for i in range(logits.shape[0]):
        for j in range(logits.shape[1]):
            if labels[i, j] >= 0:
                for k in range(K):
                    y = labels[i, j] == k
                    p = torch.sigmoid(logits[i, j, k])
                    p_t = p if y else 1 - p
                    a = alpha[k] if y else 1 - alpha[k]
                    total = total - a * (1 - p_t) ** 2 * torch.log(p_t) + (1 - p_t) ** 3
    assert value.item() == pytest.approx(total.item(), rel=1e-10)


def test_quality_targets_are_ious_of_decoded_predictions():
    cfg = tiny_cfg()
    cfg.MODEL.RETINANET.CLS_LOSS_TYPE = "quality_focal"
    model = build_model(cfg)
    r = 30
    anchors = [Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(r, 1) + torch.arange(r).float()[:, None])]
    g = torch.Generator().manual_seed(0)
    deltas = [torch.randn(2, r, 4, generator=g) * 0.2]
    gt_boxes = [torch.tensor([[2.0, 1.0, 14.0, 12.0]]).repeat(r, 1) for _ in range(2)]
    pos_mask = torch.rand(2, r, generator=g) < 0.3
    quality = model.quality_targets(anchors, deltas, gt_boxes, pos_mask)
    for i in range(2):
        for j in range(r):
            if pos_mask[i, j]:
                box = model.box2box_transform.apply_deltas(deltas[0][i, j][None], anchors[0].tensor[j][None])
                expected = pairwise_iou(Boxes(box), Boxes(gt_boxes[i][j][None]))[0, 0]
                assert quality[i, j].item() == pytest.approx(expected.item(), rel=1e-6)
            else:
                assert quality[i, j] == 0


@pytest.mark.parametrize("loss_type", ["quality_focal", "varifocal", "poly1_focal"])
def test_family_trains_in_focal_retinanet(loss_type):
    cfg = tiny_cfg()
    cfg.MODEL.RETINANET.CLS_LOSS_TYPE = loss_type
    model = build_model(cfg)
    losses, grads, storage = train_step(model, tiny_batch())
    assert torch.isfinite(losses["loss_cls"]) and losses["loss_cls"] > 0
    assert grads["head.cls_score.weight"].abs().sum() > 0
    assert 0 <= storage.history("cls_loss_background_share").latest() <= 1


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("QUALITY_FOCAL.BETA", 0.5, "QUALITY_FOCAL.BETA = 0.5 is not allowed"),
        ("VARIFOCAL.ALPHA", -0.1, "VARIFOCAL.ALPHA = -0.1 is not allowed"),
        ("VARIFOCAL.GAMMA", -1.0, "VARIFOCAL.GAMMA = -1.0 is not allowed"),
        ("POLY1.EPSILON", -2.0, "POLY1.EPSILON = -2.0 is not allowed"),
        ("GHM_C.MOMENTUM", 1.0, "GHM_C.MOMENTUM = 1.0 is not allowed"),
        ("GHM_C.BINS", 0, "GHM_C.BINS = 0 is not allowed"),
    ],
)
def test_bad_values_of_the_family_are_named(key, value, message):
    cfg = tiny_cfg()
    cfg.MODEL.RETINANET.CLS_LOSS_TYPE = {"QUALITY_FOCAL": "quality_focal", "VARIFOCAL": "varifocal", "POLY1": "poly1_focal", "GHM_C": "ghm_c"}[key.split(".")[0]]
    node, name = cfg.MODEL.RETINANET, key.split(".")
    setattr(getattr(node, name[0]), name[1], value)
    with pytest.raises(ConfigValueError, match=message.replace(".", r"\.")):
        build_model(cfg)
    assert math.isfinite(value)
    assert retina_plugin.CLS_LOSS_REGISTRY.get(cfg.MODEL.RETINANET.CLS_LOSS_TYPE)


@pytest.mark.parametrize("loss_type", ["quality_focal", "varifocal", "poly1_focal"])
def test_the_fused_family_names_a_bad_impl(loss_type):
    cfg = tiny_cfg()
    cfg.MODEL.RETINANET.CLS_LOSS_TYPE = loss_type
    cfg.MODEL.RETINANET.FOCAL_LOSS_IMPL = "fast"
    with pytest.raises(ConfigValueError, match="FOCAL_LOSS_IMPL = 'fast' is not allowed: choose one of"):
        build_model(cfg)


def ghm_direct(logits, labels, bins, density=None):
    """GHM-C in float64, written from the paper: weights N / GD(g) / (non-empty bins)."""
    x = logits.detach()
    target = torch.zeros_like(x)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            if 0 <= labels[i, j] < K:
                target[i, j, labels[i, j]] = 1
    valid = (labels >= 0)[..., None].expand_as(x)
    g = (torch.sigmoid(x) - target).abs()
    index = torch.clamp((g * bins).floor().long(), max=bins - 1)
    counts = torch.tensor([float(((index == b) & valid).sum()) for b in range(bins)], dtype=x.dtype)
    density = counts if density is None else density
    n = valid.sum().item()
    weights = torch.zeros_like(x)
    for b in range(bins):
        if counts[b] > 0:
            weights[(index == b) & valid] = n / density[b].item() / int((counts > 0).sum())
    bce = -(target * torch.nn.functional.logsigmoid(logits) + (1 - target) * torch.nn.functional.logsigmoid(-logits))
    return (weights * bce).sum() / n, counts


def test_ghm_c_matches_its_formula_and_its_moving_density():
    from retina_plugin.losses import ghm_c_loss

    logits, labels, _ = inputs(scale=3.0)
    value = ghm_c_loss(logits, labels, bins=10, momentum=0.0)
    reference, counts = ghm_direct(logits, labels, 10)
    (grad,) = torch.autograd.grad(value, logits)
    (reference_grad,) = torch.autograd.grad(reference, logits)
    assert value.item() == pytest.approx(reference.item(), rel=1e-10)
    assert torch.allclose(grad, reference_grad, rtol=1e-8, atol=1e-14) and torch.all(grad[labels < 0] == 0)
    # With momentum, the density is a moving average over calls: 0.25 * counts after the first.
    accumulated = torch.zeros(10, dtype=torch.float64)
    ghm_c_loss(logits, labels, 10, 0.75, accumulated)
    assert torch.allclose(accumulated, 0.25 * counts)
    logits2, labels2, _ = inputs(seed=5, scale=3.0)
    value2 = ghm_c_loss(logits2, labels2, 10, 0.75, accumulated)
    _, counts2 = ghm_direct(logits2, labels2, 10)
    expected = torch.where(counts2 > 0, 0.75 * 0.25 * counts + 0.25 * counts2, 0.25 * counts)
    assert torch.allclose(accumulated, expected)
    reference2, _ = ghm_direct(logits2, labels2, 10, density=expected)
    assert value2.item() == pytest.approx(reference2.item(), rel=1e-10)
    extreme = torch.tensor([-200.0, -30.0, 30.0, 200.0]).repeat(1, 6, 1).requires_grad_()
    out = ghm_c_loss(extreme, labels[:1, :6], 10, 0.0)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(extreme.grad).all()


def test_ghm_c_trains_unnormalised_and_its_state_is_checkpointed():
    cfg = tiny_cfg()
    cfg.MODEL.RETINANET.CLS_LOSS_TYPE = "ghm_c"
    torch.manual_seed(0)
    model = build_model(cfg)
    assert "cls_loss.accumulated" not in model.state_dict()  # detectron2's keys only
    losses, _, storage = train_step(model, tiny_batch())
    # A mean over pairs already (the bins' mean CE, each bin weighing the same), not a sum
    # over thousands of pairs divided by a few positives.
    assert 0 < losses["loss_cls"].item() < 10
    state = model.normalizer_checkpointable().state_dict()
    assert len(state["ghm_c_accumulated"]) == 30 and sum(state["ghm_c_accumulated"]) > 0
    other = build_model(cfg)
    other.normalizer_checkpointable().load_state_dict(state)
    assert torch.equal(other.cls_loss.accumulated, model.cls_loss.accumulated)
    # The same next step from the restored state: --resume stays exact.
    torch.manual_seed(0)
    other.load_state_dict(model.state_dict())
    a, _, _ = train_step(model, tiny_batch(seed=1))
    b, _, _ = train_step(other, tiny_batch(seed=1))
    assert a["loss_cls"].item() == pytest.approx(b["loss_cls"].item(), rel=1e-6)


FUSED_CASES = ["qfl", "vfl", "poly1", "poly1 per-class alpha", "poly1 per pair"]


def fused_case(which, logits, labels, quality):
    """impl -> the loss (summed, or per pair for "poly1 per pair") of `which`."""
    return {
        "qfl": lambda impl: quality_focal_loss(logits, labels, quality, 2.0, impl=impl),
        "vfl": lambda impl: varifocal_loss(logits, labels, quality, 0.75, 2.0, impl=impl),
        "poly1": lambda impl: poly1_focal_loss(logits, labels, 0.25, 2.0, 1.0, impl=impl),
        "poly1 per-class alpha": lambda impl: poly1_focal_loss(logits, labels, (0.1, 0.2, 0.3, 0.4), 1.5, -1.0, impl=impl),
        "poly1 per pair": lambda impl: poly1_focal_loss(logits, labels, 0.25, 2.0, 1.0, reduction="none", impl=impl),
    }[which]


@pytest.mark.parametrize("impl", ["eager", "compiled"])
@pytest.mark.parametrize("which", FUSED_CASES)
def test_fused_ops_equal_the_plain_versions(which, impl, monkeypatch):
    from retina_plugin.ops import pair_losses

    monkeypatch.setattr(pair_losses, "EAGER_BLOCK_ELEMENTS", 7 * K)  # many blocks, a partial last one
    logits, labels, quality = inputs(n=3, r=50, seed=11, scale=4.0, dtype=torch.float32)
    run = fused_case(which, logits, labels, quality)
    fused, plain = run(impl), run("plain")
    weights = torch.rand(plain.shape, generator=torch.Generator().manual_seed(3))  # a backward of a per-pair loss
    (grad_fused,) = torch.autograd.grad((fused * weights).sum(), logits)
    (grad_plain,) = torch.autograd.grad((plain * weights).sum(), logits)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_fused, grad_plain, rtol=1e-4, atol=1e-6)


def test_family_auto_compiles_large_inputs_and_falls_back_when_compiling_fails(monkeypatch, caplog):
    from retina_plugin.ops import pair_losses

    calls = []

    def counting(x, labels, quality, *arguments):
        calls.append(x.shape)
        loss, grad = pair_losses.quality_focal_kernel(x, labels, quality, *arguments)
        return loss.sum(), grad

    monkeypatch.setattr(torch, "compile", lambda fn, dynamic=None: counting)
    monkeypatch.setattr(pair_losses, "_compiled_kernels", {})
    monkeypatch.setattr(pair_losses, "_compile_failed", False)
    monkeypatch.setattr(pair_losses, "AUTO_COMPILE_ELEMENTS", 400)
    small, small_labels, small_quality = inputs(n=1, r=20, dtype=torch.float32)  # 80 logits
    large, large_labels, large_quality = inputs(n=3, r=50, dtype=torch.float32)  # 600
    quality_focal_loss(small, small_labels, small_quality)
    assert calls == []
    quality_focal_loss(large, large_labels, large_quality)
    assert calls == [(150, K)]

    def broken(*args):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(pair_losses, "_compiled_kernels", {(pair_losses.quality_focal_kernel, "sum"): broken})
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        quality_focal_loss(large, large_labels, large_quality, impl="compiled")
    with caplog.at_level("WARNING"):
        loss = quality_focal_loss(large, large_labels, large_quality, impl="auto")
    assert "using the eager path" in caplog.text
    torch.testing.assert_close(loss, quality_focal_loss(large, large_labels, large_quality, impl="eager"))
    with pytest.raises(ValueError, match="impl must be one of"):
        quality_focal_loss(large, large_labels, large_quality, impl="fast")
