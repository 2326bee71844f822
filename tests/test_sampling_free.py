"""Sampling-Free (retina_plugin/sampling_free.py): the measured prior, guided loss scaling and the
class-adaptive score threshold, on the imbalance meter's hand-counted data set."""
import json
import math
import os
import uuid

import pytest
import torch

from detectron2.modeling import build_model

from retina_plugin import ConfigValueError, validate_config
from retina_plugin import sampling_free
from retina_plugin.config import get_retina_cfg, merge_config_file
from retina_plugin.data import register_coco_dataset

from helpers import REPO, tiny_batch, train_step
from test_imbalance import HAND_CONFIG, IGNORED, K, NEGATIVE, POSITIVE, write_hand_dataset

# Counted by hand in test_imbalance: 3 positive, 1 ignored, 168 negative anchors, 3 classes.
HAND_PRIOR = POSITIVE / (POSITIVE + NEGATIVE) / K


@pytest.fixture
def hand_cfg(tmp_path, monkeypatch):
    """configs/quickstart.yaml on the hand-counted data set, its cache in a fresh folder."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    json_file, images = write_hand_dataset(tmp_path)
    name = f"hand_{uuid.uuid4().hex[:8]}"
    register_coco_dataset(name, str(json_file), str(images))
    return get_retina_cfg(
        os.path.join(REPO, "configs", "quickstart.yaml"),
        [*HAND_CONFIG, "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()", "MODEL.WEIGHTS", ""],
    )


def test_prior_is_the_hand_counted_foreground_fraction_per_class(hand_cfg, monkeypatch):
    assert IGNORED == 1  # the ignored anchor counts neither way
    record = sampling_free.data_prior(hand_cfg)
    assert record["positive_anchors"] == POSITIVE and record["negative_anchors"] == NEGATIVE
    assert record["prior"] == pytest.approx(HAND_PRIOR)
    assert record["bias"] == pytest.approx(math.log(HAND_PRIOR / (1 - HAND_PRIOR)))
    cache = sampling_free.prior_cache_file(hand_cfg)
    assert json.loads(open(cache).read())["prior"] == record["prior"]

    # Measured once: the cache answers, nothing is counted again.
    def no_measuring(cfg):
        raise AssertionError("measured twice")

    monkeypatch.setattr(sampling_free, "measure_prior", no_measuring)
    assert sampling_free.data_prior(hand_cfg)["prior"] == record["prior"]
    # Other anchors label other anchors: another cache entry.
    other = hand_cfg.clone()
    other.MODEL.RETINANET.IOU_THRESHOLDS = [0.3, 0.5]
    assert sampling_free.prior_cache_file(other) != cache


def test_a_run_that_measures_the_prior_starts_where_one_reading_the_cache_does(hand_cfg):
    from detectron2.utils.env import seed_all_rng

    cfg = hand_cfg.clone()
    cfg.MODEL.RETINANET.SAMPLING_FREE.PRIOR_FROM_DATA = True
    assert not os.path.isfile(sampling_free.prior_cache_file(cfg))
    weights = []
    for _ in range(2):  # measured, then cached
        seed_all_rng(7)
        weights.append(build_model(cfg).state_dict())
    assert os.path.isfile(sampling_free.prior_cache_file(cfg))
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def test_the_measured_prior_initialises_the_class_bias_and_the_threshold(hand_cfg):
    cfg = hand_cfg.clone()
    cfg.MODEL.RETINANET.SAMPLING_FREE.PRIOR_FROM_DATA = True
    cfg.MODEL.RETINANET.SAMPLING_FREE.ADAPTIVE_SCORE_THRESH = True
    model = build_model(cfg)
    bias = model.head.cls_score.bias
    assert torch.allclose(bias, torch.full_like(bias, math.log(HAND_PRIOR / (1 - HAND_PRIOR))))
    assert model.test_score_thresh == pytest.approx(HAND_PRIOR)

    # The threshold follows the classifier's prior: PRIOR_PROB when it is not measured.
    cfg.MODEL.RETINANET.SAMPLING_FREE.PRIOR_FROM_DATA = False
    cfg.MODEL.RETINANET.PRIOR_PROB = 0.02
    assert build_model(cfg).test_score_thresh == pytest.approx(0.02)
    cfg.MODEL.RETINANET.SAMPLING_FREE.ADAPTIVE_SCORE_THRESH = False
    assert build_model(cfg).test_score_thresh == cfg.MODEL.RETINANET.SCORE_THRESH_TEST

    # At inference, every kept detection scores above the prior, and lower scores do count.
    cfg.MODEL.RETINANET.SAMPLING_FREE.ADAPTIVE_SCORE_THRESH = True
    cfg.MODEL.RETINANET.PRIOR_PROB = 0.001
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        detections = model([{"image": torch.rand(3, 64, 64) * 255, "height": 64, "width": 64}])[0]["instances"]
    assert len(detections) > 0 and bool((detections.scores > 0.001).all())
    assert float(detections.scores.min()) < cfg.MODEL.RETINANET.SCORE_THRESH_TEST


def test_guided_scale_matches_the_box_loss_and_carries_no_gradient(cfg):
    cfg.MODEL.RETINANET.LOSS_NORMALIZER = "guided"
    torch.manual_seed(0)
    guided = build_model(cfg)
    plain_cfg = cfg.clone()
    plain_cfg.MODEL.RETINANET.LOSS_NORMALIZER = "num_pos"
    plain = build_model(plain_cfg)
    plain.load_state_dict(guided.state_dict())
    batch = tiny_batch()

    losses, _, _ = train_step(guided, batch)
    assert losses["loss_cls"].item() == pytest.approx(losses["loss_box_reg"].item(), rel=1e-5)
    # The class loss alone: no gradient reaches the box branch through the ratio.
    guided.zero_grad()
    from detectron2.utils.events import EventStorage

    with EventStorage():
        guided.train()
        guided(batch)["loss_cls"].backward()
    box_grad = guided.head.bbox_pred.weight.grad
    assert box_grad is None or float(box_grad.abs().max()) == 0.0
    guided_cls_grad = guided.head.cls_score.weight.grad.clone()

    # Its gradient is the paper normaliser's, scaled by the (detached) ratio of the two losses.
    plain.zero_grad()
    with EventStorage():
        plain.train()
        plain_losses = plain(batch)
        plain_losses["loss_cls"].backward()
    ratio = plain_losses["loss_box_reg"].item() / plain_losses["loss_cls"].item()
    expected = plain.head.cls_score.weight.grad * ratio
    # Float32 sums in another order: an element near 0 (cancelling terms) keeps an error of the
    # order of the largest element's rounding, so the absolute tolerance scales with it.
    atol = 1e-5 * float(expected.abs().max())
    assert torch.allclose(guided_cls_grad, expected, rtol=1e-4, atol=atol)


def test_sampling_free_yaml_sets_all_three(cfg):
    merge_config_file(cfg, os.path.join(REPO, "configs", "losses", "sampling_free.yaml"))
    retinanet = cfg.MODEL.RETINANET
    assert retinanet.LOSS_NORMALIZER == "guided"
    assert retinanet.SAMPLING_FREE.PRIOR_FROM_DATA and retinanet.SAMPLING_FREE.ADAPTIVE_SCORE_THRESH
    assert (retinanet.FOCAL_LOSS_ALPHA, retinanet.FOCAL_LOSS_GAMMA) == (-1.0, 0.0)
    validate_config(cfg)


def test_bad_sampling_free_values_are_clear_errors(cfg):
    cfg.MODEL.RETINANET.SAMPLING_FREE.PRIOR_FROM_DATA = 1
    cfg.MODEL.RETINANET.LOSS_NORMALIZER = "guide"
    with pytest.raises(ConfigValueError) as error:
        validate_config(cfg)
    message = str(error.value)
    assert "MODEL.RETINANET.SAMPLING_FREE.PRIOR_FROM_DATA = 1 is not allowed: use True or False" in message
    assert "MODEL.RETINANET.LOSS_NORMALIZER = 'guide' is not allowed: choose one of num_pos, ema, guided" in message


def test_a_prior_without_training_data_is_a_clear_error(cfg):
    cfg.MODEL.RETINANET.SAMPLING_FREE.PRIOR_FROM_DATA = True
    cfg.DATASETS.TRAIN = ()
    with pytest.raises(ConfigValueError, match="PRIOR_FROM_DATA = True needs DATASETS.TRAIN"):
        build_model(cfg)
