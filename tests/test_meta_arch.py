import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import META_ARCH_REGISTRY, build_model
from detectron2.utils.events import EventStorage

from retina_plugin import CLS_LOSS_REGISTRY, FocalLoss, FocalRetinaNet

from helpers import tiny_batch, tiny_cfg, train_step

VARIANTS = {"ce": (-1.0, 0.0), "balanced_ce": (0.75, 0.0), "fl": (-1.0, 2.0), "balanced_fl": (0.25, 2.0)}


def builtin_and_plugin(alpha=0.25, gamma=2.0, **retinanet):
    """detectron2's RetinaNet and FocalRetinaNet from one config, the plugin's loaded with the
    built-in's weights through detectron2's checkpointer."""
    cfgs = []
    for meta_architecture in ("RetinaNet", "FocalRetinaNet"):
        cfg = tiny_cfg(meta_architecture)
        cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA = alpha
        cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA = gamma
        cfg.MODEL.RETINANET.SCORE_THRESH_TEST = 0.0  # random weights score about PRIOR_PROB
        for key, value in retinanet.items():
            setattr(cfg.MODEL.RETINANET, key, value)
        cfgs.append(cfg)
    torch.manual_seed(0)
    builtin = build_model(cfgs[0])
    torch.manual_seed(1)
    plugin = build_model(cfgs[1])
    return builtin, plugin


def test_registered_as_a_detectron2_meta_architecture():
    assert META_ARCH_REGISTRY.get("FocalRetinaNet") is FocalRetinaNet


def test_builtin_checkpoint_loads_with_no_missing_or_unexpected_keys(tmp_path, caplog):
    builtin, plugin = builtin_and_plugin()
    DetectionCheckpointer(builtin, save_dir=str(tmp_path)).save("builtin")
    assert not torch.equal(builtin.head.cls_score.weight, plugin.head.cls_score.weight)

    # strict=True raises on any missing or unexpected key.
    plugin.load_state_dict(torch.load(tmp_path / "builtin.pth")["model"], strict=True)
    # And through detectron2's checkpointer, which would log them instead.
    _, plugin = builtin_and_plugin()
    with caplog.at_level("WARNING"):
        DetectionCheckpointer(plugin).load(str(tmp_path / "builtin.pth"))
    assert "not found in the checkpoint" not in caplog.text
    assert "not used by the model" not in caplog.text
    for key, value in builtin.state_dict().items():
        assert torch.equal(plugin.state_dict()[key], value), key


def test_same_seed_same_initial_weights_as_builtin():
    torch.manual_seed(0)
    builtin = build_model(tiny_cfg("RetinaNet"))
    torch.manual_seed(0)
    plugin = build_model(tiny_cfg("FocalRetinaNet"))
    for key, value in builtin.state_dict().items():
        assert torch.equal(plugin.state_dict()[key], value), key


@pytest.mark.parametrize("variant", VARIANTS)
def test_same_training_losses_and_gradients_as_builtin(variant):
    builtin, plugin = builtin_and_plugin(*VARIANTS[variant])
    plugin.load_state_dict(builtin.state_dict())
    batch = tiny_batch()

    # Two steps, so that the moving-average normaliser is compared after an update too.
    for step in range(2):
        builtin_losses, builtin_grads, _ = train_step(builtin, batch)
        plugin_losses, plugin_grads, storage = train_step(plugin, batch)
        assert set(plugin_losses) == {"loss_cls", "loss_box_reg"}
        for name in builtin_losses:
            torch.testing.assert_close(plugin_losses[name], builtin_losses[name], rtol=1e-5, atol=0)
        assert builtin_grads.keys() == plugin_grads.keys()
        for name in builtin_grads:
            torch.testing.assert_close(
                plugin_grads[name], builtin_grads[name], rtol=1e-4, atol=1e-7, msg=name
            )
    assert plugin.loss_normalizer_ema == pytest.approx(builtin.loss_normalizer)


@pytest.mark.parametrize("variant", VARIANTS)
def test_same_detections_as_builtin(variant):
    builtin, plugin = builtin_and_plugin(*VARIANTS[variant])
    plugin.load_state_dict(builtin.state_dict())
    batch = [{k: v for k, v in x.items() if k != "instances"} for x in tiny_batch(seed=3)]
    builtin.eval()
    plugin.eval()
    with torch.no_grad():
        expected = builtin(batch)
        got = plugin(batch)
    for want, have in zip(expected, got):
        want, have = want["instances"], have["instances"]
        assert len(want) > 0
        assert torch.equal(have.pred_classes, want.pred_classes)
        torch.testing.assert_close(have.scores, want.scores, rtol=0, atol=0)
        torch.testing.assert_close(have.pred_boxes.tensor, want.pred_boxes.tensor, rtol=0, atol=0)


def test_num_pos_normaliser_divides_by_the_batch_positives():
    _, plugin = builtin_and_plugin(LOSS_NORMALIZER="num_pos")
    batch = tiny_batch()
    plugin.train()
    with EventStorage() as storage:
        losses = plugin(batch)
        num_pos_per_image = storage.history("num_pos_anchors").latest()
        normalizer = storage.history("loss_normalizer").latest()
    assert num_pos_per_image > 0
    assert normalizer == pytest.approx(num_pos_per_image * len(batch))

    # The same batch under "ema" on its first step: the sums are equal, the divisor differs.
    ema = build_model(tiny_cfg())
    ema.load_state_dict(plugin.state_dict())
    ema.train()
    with EventStorage() as storage:
        ema_losses = ema(batch)
        ema_normalizer = storage.history("loss_normalizer").latest()
    assert ema_normalizer == pytest.approx(0.9 * 100 + 0.1 * normalizer)
    for name in losses:
        torch.testing.assert_close(losses[name] * normalizer, ema_losses[name] * ema_normalizer)


@pytest.mark.parametrize("loss_type", ["focal", "ghm_c"])
def test_cls_loss_weight_scales_the_classification_loss_alone(loss_type):
    # GHM-C included: a loss normalised by itself is weighted too.
    _, plugin = builtin_and_plugin(LOSS_NORMALIZER="num_pos", CLS_LOSS_TYPE=loss_type)
    weighted_cfg = tiny_cfg()
    weighted_cfg.MODEL.RETINANET.LOSS_NORMALIZER = "num_pos"
    weighted_cfg.MODEL.RETINANET.CLS_LOSS_TYPE = loss_type
    weighted_cfg.MODEL.RETINANET.CLS_LOSS_WEIGHT = 2.5
    weighted = build_model(weighted_cfg)
    weighted.load_state_dict(plugin.state_dict())
    batch = tiny_batch()
    losses = {}
    for name, model in (("plain", plugin), ("weighted", weighted)):
        model.train()
        with EventStorage():
            losses[name] = model(batch)
    assert losses["plain"]["loss_cls"] > 0
    torch.testing.assert_close(losses["weighted"]["loss_cls"], 2.5 * losses["plain"]["loss_cls"])
    torch.testing.assert_close(losses["weighted"]["loss_box_reg"], losses["plain"]["loss_box_reg"], rtol=0, atol=0)


def test_a_registered_loss_is_selected_by_cls_loss_type():
    calls = []

    @CLS_LOSS_REGISTRY.register_as("recording_focal")
    class RecordingFocal(FocalLoss):
        def forward(self, pred_logits, gt_labels, anchors):
            calls.append((pred_logits.shape, gt_labels.shape, anchors))
            return super().forward(pred_logits, gt_labels, anchors)

    try:
        cfg = tiny_cfg()
        cfg.MODEL.RETINANET.CLS_LOSS_TYPE = "recording_focal"
        model = build_model(cfg)
        train_step(model, tiny_batch())
        logits_shape, labels_shape, anchors = calls[0]  # then on the object anchors, for a metric
        assert logits_shape[:2] == labels_shape and logits_shape[2] == 3
        assert anchors.shape == (labels_shape[1], 4)
    finally:
        CLS_LOSS_REGISTRY._obj_map.pop("recording_focal")


def test_background_share_of_the_classification_loss_is_logged():
    shares = {}
    for variant in ("ce", "balanced_fl"):
        cfg = tiny_cfg()
        cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA, cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA = VARIANTS[variant]
        torch.manual_seed(0)
        model = build_model(cfg)
        model.train()
        with EventStorage() as storage:
            model(tiny_batch())
            shares[variant] = storage.history("cls_loss_background_share").latest()
    # The paper's point: the many easy background anchors weigh in CE's loss, and focal loss
    # takes them nearly out.
    assert 0.05 < shares["ce"] < 1
    assert 0 < shares["balanced_fl"] < shares["ce"] / 10


def test_bfloat16_autocast_trains_with_a_float32_loss():
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    seen = []
    original = model.cls_loss.forward

    def recording(pred_logits, gt_labels, anchors):
        loss = original(pred_logits, gt_labels, anchors)
        seen.append((pred_logits.dtype, loss.dtype))
        return loss

    model.cls_loss.forward = recording
    with EventStorage():
        for _ in range(3):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                losses = model(tiny_batch())
            assert all(torch.isfinite(v) for v in losses.values())
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
    assert seen[0] == (torch.bfloat16, torch.float32)


def test_float64_scores_keep_the_order_float32_rounds_to_a_tie():
    cfg = tiny_cfg()
    cfg.MODEL.RETINANET.PRIOR_PROB = 0.04  # scores 0.01 to 0.27 (see test_evaluation.py): none saturate
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    images = [{k: v for k, v in record.items() if k != "instances"} for record in tiny_batch(seed=1)]

    def infer(dtype):
        model.score_dtype_test = dtype
        with torch.no_grad():
            return [out["instances"] for out in model(images)]

    # Away from saturation the two precisions find the same detections.
    for single, double in zip(infer(torch.float32), infer(torch.float64)):
        assert double.scores.dtype == torch.float64 and len(single) == len(double) > 0
        torch.testing.assert_close(double.scores.float(), single.scores)
        torch.testing.assert_close(double.pred_boxes.tensor.float(), single.pred_boxes.tensor)
        assert torch.equal(double.pred_classes, single.pred_classes)

    # A confident classifier: logits of about 19 to 21, which a float32 sigmoid all rounds to 1.
    with torch.no_grad():
        model.head.cls_score.bias.fill_(20.0)
    single, double = infer(torch.float32)[0], infer(torch.float64)[0]
    assert (single.scores == 1).sum() > 10  # ties: the order among them is not the model's
    assert bool((double.scores < 1).all()) and len(set(double.scores.tolist())) == len(double)
    assert bool((double.scores[1:] < double.scores[:-1]).all())  # ranked by the logits
