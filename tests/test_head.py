import math

import pytest
import torch
from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model

from retina_plugin import RETINA_HEAD_REGISTRY, RetinaHead, build_retina_head

SHAPES = [ShapeSpec(channels=32, stride=s) for s in (8, 16, 32, 64, 128)]


@pytest.mark.parametrize("prior_prob", [0.01, 0.2, 0.5])
def test_logits_bias_starts_at_the_prior(cfg, prior_prob):
    cfg.MODEL.RETINANET.PRIOR_PROB = prior_prob
    head = build_retina_head(cfg, SHAPES)
    expected = -math.log((1 - prior_prob) / prior_prob)
    torch.testing.assert_close(head.cls_score.bias, torch.full_like(head.cls_score.bias, expected))
    # So every class of every anchor starts with probability prior_prob, whatever the input.
    logits, _ = head([torch.randn(1, 32, 8 // 2**i + 1, 8 // 2**i + 1) for i in range(5)])
    for level in logits:
        probability = level.sigmoid()
        assert (probability - prior_prob).abs().max() < 0.01 * prior_prob + 1e-3


def test_convs_start_from_small_gaussians_and_zero_bias(cfg):
    torch.manual_seed(0)
    head = build_retina_head(cfg, SHAPES)
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2 * cfg.MODEL.RETINANET.NUM_CONVS + 2
    for conv in convs:
        assert abs(conv.weight.std().item() - 0.01) < 0.002
        if conv is not head.cls_score:
            assert (conv.bias == 0).all()


def test_head_is_shared_across_levels_with_the_paper_output_sizes(cfg):
    head = build_retina_head(cfg, SHAPES)
    features = [torch.randn(2, 32, s, s) for s in (16, 8, 4, 2, 1)]
    logits, deltas = head(features)
    num_anchors = 2 * 3  # 2 sizes x 3 aspect ratios in the tiny config
    for feature, level_logits, level_deltas in zip(features, logits, deltas):
        assert level_logits.shape == (2, num_anchors * 3, *feature.shape[2:])
        assert level_deltas.shape == (2, num_anchors * 4, *feature.shape[2:])
    # One set of weights for all levels: 2 towers x NUM_CONVS convs + 2 output convs.
    assert len([p for p in head.parameters()]) == 2 * (2 * 2 + 2)


def test_norm_adds_a_norm_after_each_tower_conv(cfg):
    cfg.MODEL.RETINANET.NORM = "GN"
    head = build_retina_head(cfg, SHAPES)
    assert sum(isinstance(m, nn.GroupNorm) for m in head.modules()) == 2 * 2


def test_head_registry_selects_a_user_head_by_name(cfg):
    @RETINA_HEAD_REGISTRY.register()
    class WiderLogitsHead(RetinaHead):
        pass

    try:
        cfg.MODEL.RETINANET.HEAD_NAME = "WiderLogitsHead"
        model = build_model(cfg)
        assert type(model.head) is WiderLogitsHead
    finally:
        RETINA_HEAD_REGISTRY._obj_map.pop("WiderLogitsHead")
