"""The rest of the loss family: per-class alpha, FL*, softmax focal loss and OHEM."""
import math

import pytest
import torch
from torch.nn import functional as F

from detectron2.modeling import build_model

from retina_plugin import (
    ConfigValueError,
    merge_config_file,
    merge_config_list,
    sigmoid_focal_loss,
)
from retina_plugin.losses import (
    select_hard_anchors,
    sigmoid_focal_star_loss,
    softmax_focal_loss,
)

from helpers import tiny_batch, tiny_cfg, train_step
from test_losses import naive_focal_loss, random_problem


def model_for(loss_type, **retinanet):
    cfg = tiny_cfg()
    cfg.MODEL.RETINANET.CLS_LOSS_TYPE = loss_type
    for key, value in retinanet.items():
        node = cfg.MODEL.RETINANET
        *path, name = key.split(".")
        for part in path:
            node = node[part]
        node[name] = value
    torch.manual_seed(0)
    return build_model(cfg)


# ---------------------------------------------------------------- per-class alpha


@pytest.mark.parametrize("impl", ["eager", "compiled"])
def test_per_class_alpha_weighs_each_class_by_its_own_alpha(impl):
    logits, labels = random_problem(num_classes=4)
    alphas = (0.1, 0.25, 0.5, 0.9)
    logits.requires_grad_(True)
    loss = sigmoid_focal_loss(logits, labels, alphas, 2.0, reduction="none", impl=impl)
    expected = torch.stack(
        [naive_focal_loss(logits, labels, a, 2.0)[:, k] for k, a in enumerate(alphas)], dim=1
    )
    torch.testing.assert_close(loss, expected)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    (expected_grad,) = torch.autograd.grad(expected.sum(), logits)
    torch.testing.assert_close(grad, expected_grad)


def test_per_class_alpha_needs_one_per_class():
    logits, labels = random_problem(num_classes=4)
    with pytest.raises(ValueError, match="3 per-class alphas for 4 classes"):
        sigmoid_focal_loss(logits, labels, (0.1, 0.2, 0.3))


def test_per_class_alpha_from_a_config_file_and_the_command_line(tmp_path):
    cfg = tiny_cfg()  # 3 classes, FOCAL_LOSS_ALPHA a number
    path = tmp_path / "alpha.yaml"
    path.write_text("MODEL:\n  RETINANET:\n    FOCAL_LOSS_ALPHA: [0.2, 0.3, 0.4]\n")
    merge_config_file(cfg, str(path))
    assert list(cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA) == [0.2, 0.3, 0.4]
    model = build_model(cfg)
    assert model.cls_loss.alpha == (0.2, 0.3, 0.4)
    # And back to one number, then a list again, from KEY VALUE pairs.
    merge_config_list(cfg, ["MODEL.RETINANET.FOCAL_LOSS_ALPHA", "0.25"])
    assert cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA == 0.25
    merge_config_list(cfg, ["MODEL.RETINANET.FOCAL_LOSS_ALPHA", "[0.5, 0.5, 0.5]"])
    assert list(cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA) == [0.5, 0.5, 0.5]


def test_per_class_alpha_all_equal_trains_as_one_alpha():
    losses = {}
    for alpha in (0.25, [0.25, 0.25, 0.25]):
        losses[str(alpha)], _, _ = train_step(model_for("focal", FOCAL_LOSS_ALPHA=alpha), tiny_batch())
    one, per_class = losses.values()
    torch.testing.assert_close(one["loss_cls"], per_class["loss_cls"])


@pytest.mark.parametrize(
    "alpha,loss_type,message",
    [
        ([0.2, 0.3], "focal", "one weight in \\[0, 1\\] per class \\(3"),
        ([0.2, 0.3, 1.5], "focal_star", "one weight in \\[0, 1\\] per class"),
        ([0.2, 0.3, 0.4], "softmax_focal", "takes one number, not one per class"),
    ],
)
def test_bad_per_class_alpha_names_the_key_and_the_fix(alpha, loss_type, message):
    with pytest.raises(ConfigValueError, match="FOCAL_LOSS_ALPHA.*" + message):
        model_for(loss_type, FOCAL_LOSS_ALPHA=alpha)


# ---------------------------------------------------------------- FL*


def naive_focal_star(logits, labels, alpha, gamma, beta):
    num_classes = logits.shape[-1]
    y = F.one_hot(labels.clamp(0, num_classes), num_classes + 1)[:, :num_classes].double()
    x_t = torch.where(y == 1, logits, -logits)
    alpha_t = torch.where(y == 1, alpha, 1 - alpha) if alpha >= 0 else torch.ones_like(x_t)
    loss = -alpha_t * torch.log(torch.sigmoid(gamma * x_t + beta)) / gamma
    return (loss * (labels >= 0).unsqueeze(-1)).sum()


@pytest.mark.parametrize("alpha,gamma,beta", [(0.25, 2.0, 1.0), (0.25, 4.0, 0.0), (-1, 1.0, -0.5)])
def test_focal_star_matches_the_appendix_formula(alpha, gamma, beta):
    logits, labels = random_problem(scale=1.0)
    logits.requires_grad_(True)
    loss = sigmoid_focal_star_loss(logits, labels, alpha, gamma, beta)
    expected = naive_focal_star(logits, labels, alpha, gamma, beta)
    torch.testing.assert_close(loss, expected)
    assert torch.autograd.gradcheck(
        lambda x: sigmoid_focal_star_loss(x, labels[:20], alpha, gamma, beta), logits[:20].detach().requires_grad_()
    )


def test_focal_star_is_finite_for_extreme_logits():
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 50.0]], requires_grad=True)
    labels = torch.tensor([0, 3])
    loss = sigmoid_focal_star_loss(logits, labels, 0.25, 4.0, 0.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_focal_star_model_starts_every_score_at_the_prior_and_trains():
    model = model_for("focal_star", **{"FOCAL_STAR.GAMMA": 4.0, "FOCAL_STAR.BETA": 1.0})
    bias = model.head.cls_score.bias.detach()
    torch.testing.assert_close(model.cls_loss.class_scores(bias), torch.full_like(bias, 0.01))
    losses, grads, _ = train_step(model, tiny_batch())
    assert all(torch.isfinite(v) for v in losses.values())
    assert grads["head.cls_score.weight"].abs().sum() > 0


def test_focal_star_gamma_must_be_positive():
    with pytest.raises(ConfigValueError, match="FOCAL_STAR.GAMMA = 0.0 .*gamma > 0"):
        model_for("focal_star", **{"FOCAL_STAR.GAMMA": 0.0})


# ---------------------------------------------------------------- softmax focal loss


def naive_softmax_focal(logits, labels, alpha, gamma):
    background = logits.shape[-1] - 1
    target = labels.clamp(0, background)
    p_t = torch.softmax(logits.double(), dim=-1).gather(1, target[:, None]).squeeze(1)
    alpha_t = torch.where(target == background, 1 - alpha, alpha) if alpha >= 0 else 1.0
    loss = -alpha_t * (1 - p_t) ** gamma * torch.log(p_t)
    return (loss * (labels >= 0)).sum()


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1, 0.0), (0.5, 0.5)])
def test_softmax_focal_loss_matches_the_formula(alpha, gamma):
    logits, labels = random_problem(num_classes=5, scale=1.0)  # labels: 5 is background
    logits = torch.cat([logits, torch.randn(len(logits), 1, dtype=logits.dtype)], dim=1)
    torch.testing.assert_close(
        softmax_focal_loss(logits, labels, alpha, gamma), naive_softmax_focal(logits, labels, alpha, gamma)
    )
    assert torch.autograd.gradcheck(
        lambda x: softmax_focal_loss(x, labels[:20], alpha, gamma), logits[:20].clone().requires_grad_()
    )


def test_softmax_focal_with_gamma_0_is_cross_entropy():
    logits, labels = random_problem(num_classes=5)
    logits = torch.cat([logits, torch.zeros(len(logits), 1, dtype=logits.dtype)], dim=1)
    expected = F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum")
    torch.testing.assert_close(softmax_focal_loss(logits, labels, -1, 0.0), expected)


def test_softmax_focal_is_finite_for_extreme_logits():
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0], [0.0, 0.0, 1e4]], requires_grad=True)
    loss = softmax_focal_loss(logits, torch.tensor([0, 2, 2]), 0.25, 0.5)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_softmax_focal_model_predicts_background_as_a_class():
    model = model_for("softmax_focal")  # 3 classes, 6 anchors per position
    num_anchors = model.head.cls_score.out_channels // 4
    assert model.head.cls_score.out_channels == num_anchors * (3 + 1)
    # At the start, background has probability 1 - pi and each class pi / K.
    probabilities = model.head.cls_score.bias.detach().view(num_anchors, 4).softmax(-1)
    expected = torch.tensor([0.01 / 3] * 3 + [0.99]).expand(num_anchors, 4)
    torch.testing.assert_close(probabilities, expected)
    losses, grads, _ = train_step(model, tiny_batch())
    assert all(torch.isfinite(v) for v in losses.values())
    # Inference reads the K object classes' softmax scores, never background's.
    model.eval()
    model.test_score_thresh = 0.0
    with torch.no_grad():
        instances = model(tiny_batch())[0]["instances"]
    assert len(instances) > 0 and instances.pred_classes.max() < 3
    assert (instances.scores <= 1).all()


# ---------------------------------------------------------------- OHEM


def test_ohem_keeps_the_hardest_anchors_after_nms():
    anchors = torch.tensor(
        [[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [40, 40, 50, 50], [60, 60, 70, 70]],
        dtype=torch.float,
    )
    losses = torch.tensor([[5.0, 4.0, 3.0, 1.0, 9.0]])
    labels = torch.tensor([[2, 2, 0, 2, -1]])  # 2 classes: label 2 is background, -1 ignored

    def kept(**kw):
        args = dict(batch_size=2, nms_thresh=0.5, positive_fraction=-1)
        args.update(kw)
        mask = select_hard_anchors(losses, labels, anchors, 2, **args)
        return torch.nonzero(mask[0]).squeeze(1).tolist()

    assert kept() == [0, 2]  # 1 overlaps 0 (IoU 0.68), which is harder; 4 is ignored
    assert kept(nms_thresh=1.0) == [0, 1]
    assert kept(nms_thresh=1.0, batch_size=10) == [0, 1, 2, 3]
    # At most half object anchors: the one object anchor, then the hardest background.
    assert kept(nms_thresh=1.0, positive_fraction=0.5) == [0, 2]
    assert kept(nms_thresh=1.0, positive_fraction=0.5, batch_size=1) == [0]


def test_ohem_loss_is_ce_on_the_mined_anchors_only():
    model = model_for("ohem", **{"OHEM.BATCH_SIZE_PER_IMAGE": 16, "OHEM.POSITIVE_FRACTION": 0.25})
    loss_fn = model.cls_loss
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 300, 3, generator=g, requires_grad=True)
    labels = torch.randint(-1, 4, (2, 300), generator=g)
    xy = torch.rand(300, 2, generator=g) * 100
    anchors = torch.cat([xy, xy + 8 + torch.rand(300, 2, generator=g) * 20], dim=1)
    loss = loss_fn(logits, labels, anchors)
    loss.backward()
    mined = logits.grad.abs().sum(-1) > 0
    assert mined.sum(dim=1).tolist() == [16, 16]
    assert ((labels[mined] >= 0) & (labels[mined] < 3)).sum() <= 2 * 4  # 1:3 per image
    mined_labels = torch.where(mined, labels, torch.full_like(labels, -1))
    expected = naive_focal_loss(logits.detach().view(-1, 3), mined_labels.view(-1), -1, 0.0).sum()
    torch.testing.assert_close(loss.detach().double(), expected)


def test_ohem_model_trains_and_logs_what_it_mined():
    model = model_for("ohem", **{"OHEM.BATCH_SIZE_PER_IMAGE": 32, "OHEM.POSITIVE_FRACTION": 0.25})
    losses, grads, storage = train_step(model, tiny_batch())
    assert all(torch.isfinite(v) for v in losses.values())
    objects = storage.history("ohem_object_anchors").latest()
    background = storage.history("ohem_background_anchors").latest()
    assert 0 < objects <= 8 and objects + background == 32


def test_bad_ohem_keys_are_all_reported_at_once():
    with pytest.raises(ConfigValueError) as error:
        model_for(
            "ohem",
            **{"OHEM.BATCH_SIZE_PER_IMAGE": 0, "OHEM.NMS_THRESH": 0.0, "OHEM.POSITIVE_FRACTION": 1.5},
        )
    message = str(error.value)
    assert message.startswith("3 config problems")
    for key in ("BATCH_SIZE_PER_IMAGE = 0", "NMS_THRESH = 0.0", "POSITIVE_FRACTION = 1.5"):
        assert key in message


def test_every_registered_loss_trains_a_model_with_finite_losses():
    for loss_type in ("focal", "focal_star", "softmax_focal", "ohem"):
        losses, grads, _ = train_step(model_for(loss_type), tiny_batch())
        assert all(math.isfinite(v.item()) for v in losses.values()), loss_type
        assert all(torch.isfinite(g).all() for g in grads.values()), loss_type
