import json
import os

import pytest

from detectron2.config import get_cfg
from detectron2.model_zoo import get_config_file
from detectron2.modeling import build_model

import retina_plugin
from retina_plugin import ConfigValueError, add_retina_config, merge_config_file

from helpers import REPO, tiny_cfg


def test_new_keys_have_defaults_that_match_detectron2():
    cfg = add_retina_config(get_cfg())
    assert cfg.MODEL.RETINANET.HEAD_NAME == "RetinaHead"
    assert cfg.MODEL.RETINANET.CLS_LOSS_TYPE == "focal"
    assert cfg.MODEL.RETINANET.LOSS_NORMALIZER == "ema"
    assert cfg.MODEL.RETINANET.FOCAL_LOSS_IMPL == "auto"
    assert cfg.MODEL.RETINANET.LOSS_NORMALIZER_MOMENTUM == 0.9
    assert cfg.MODEL.RETINANET.LOSS_NORMALIZER_INIT == 100
    assert cfg.MODEL.RETINANET.CLS_LOSS_WEIGHT == 1.0
    assert cfg.MODEL.RETINANET.SCORE_DTYPE_TEST == "float32"


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("FOCAL_LOSS_GAMMA", -0.5, r"MODEL.RETINANET.FOCAL_LOSS_GAMMA = -0.5 .*gamma >= 0"),
        ("FOCAL_LOSS_ALPHA", 1.5, r"MODEL.RETINANET.FOCAL_LOSS_ALPHA = 1.5 .*\[0, 1\], or -1"),
        ("FOCAL_LOSS_ALPHA", -0.5, r"MODEL.RETINANET.FOCAL_LOSS_ALPHA = -0.5 .*\[0, 1\], or -1"),
        ("PRIOR_PROB", 0.0, r"MODEL.RETINANET.PRIOR_PROB = 0.0 .*strictly between 0 and 1"),
        ("PRIOR_PROB", 1.0, r"MODEL.RETINANET.PRIOR_PROB = 1.0 .*strictly between 0 and 1"),
        ("NUM_CONVS", 0, r"MODEL.RETINANET.NUM_CONVS = 0 .*1 or more"),
        ("CLS_LOSS_TYPE", "focla", r"CLS_LOSS_TYPE = 'focla' is not registered.*Registered: 'focal'"),
        ("HEAD_NAME", "Retina", r"HEAD_NAME = 'Retina' is not registered.*Registered: 'RetinaHead'"),
        ("LOSS_NORMALIZER", "batch", r"LOSS_NORMALIZER = 'batch' .*num_pos, ema"),
        ("FOCAL_LOSS_IMPL", "cuda", r"FOCAL_LOSS_IMPL = 'cuda' .*'auto', 'compiled', 'eager'"),
        ("LOSS_NORMALIZER_MOMENTUM", 1.0, r"LOSS_NORMALIZER_MOMENTUM = 1.0 .*\[0, 1\)"),
        ("BBOX_REG_LOSS_TYPE", "l2", r"BBOX_REG_LOSS_TYPE = 'l2' .*smooth_l1, giou, diou, ciou"),
        ("CLS_LOSS_WEIGHT", 0.0, r"CLS_LOSS_WEIGHT = 0.0 .*positive finite number"),
        ("CLS_LOSS_WEIGHT", float("nan"), r"CLS_LOSS_WEIGHT = nan .*positive finite number"),
        ("SCORE_DTYPE_TEST", "float16", r"SCORE_DTYPE_TEST = 'float16' .*float32, float64"),
        ("SCORE_DTYPE_TEST", ["float64"], r"SCORE_DTYPE_TEST = \['float64'\] .*float32, float64"),
        ("IN_FEATURES", ["p3", "p4", "p5", "p6", "p9"], r"IN_FEATURES = \[.*'p9'\] .*no \['p9'\]"),
        ("IOU_THRESHOLDS", [0.5, 0.4], r"IOU_THRESHOLDS = \[0.5, 0.4\] .*increasing IoUs"),
        ("IOU_LABELS", [0, 1], r"IOU_LABELS = \[0, 1\] .*use 3 labels"),
    ],
)
def test_bad_values_fail_when_the_model_is_built(key, value, message):
    cfg = tiny_cfg()
    setattr(cfg.MODEL.RETINANET, key, value)
    with pytest.raises(ConfigValueError, match=message):
        build_model(cfg)


@pytest.mark.parametrize("alpha", [-1.0, 0.0, 0.25, 1.0])
def test_allowed_alpha_values_build(alpha):
    cfg = tiny_cfg()
    cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA = alpha
    assert build_model(cfg).cls_loss.alpha == alpha


@pytest.mark.parametrize(
    "name,alpha,gamma",
    [("ce", -1, 0), ("balanced_ce", 0.75, 0), ("focal", -1, 2), ("balanced_focal", 0.25, 2)],
)
def test_loss_variant_yamls_set_the_papers_settings(name, alpha, gamma):
    cfg = tiny_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", "losses", f"{name}.yaml"))
    loss = build_model(cfg).cls_loss
    assert (loss.alpha, loss.gamma) == (alpha, gamma)


@pytest.mark.parametrize(
    "name,loss_type,settings",
    [
        ("focal_star", "FocalStarLoss", {"alpha": 0.25, "gamma": 2.0, "beta": 1.0}),
        ("softmax_focal", "SoftmaxFocalLoss", {"alpha": 0.25, "gamma": 2.0}),
        ("ohem", "OHEMLoss", {"batch_size_per_image": 128, "nms_thresh": 0.5, "positive_fraction": -1}),
        ("ohem_1to3", "OHEMLoss", {"batch_size_per_image": 128, "positive_fraction": 0.25}),
        ("quality_focal", "QualityFocalLoss", {"beta": 2.0}),
        ("varifocal", "VarifocalLoss", {"alpha": 0.75, "gamma": 2.0}),
        ("poly1_focal", "Poly1FocalLoss", {"alpha": 0.25, "gamma": 2.0, "epsilon": 1.0}),
        ("ghm_c", "GHMCLoss", {"bins": 30, "momentum": 0.75}),
    ],
)
def test_other_loss_yamls_select_their_loss(name, loss_type, settings):
    cfg = tiny_cfg()
    merge_config_file(cfg, os.path.join(REPO, "configs", "losses", f"{name}.yaml"))
    loss = build_model(cfg).cls_loss
    assert type(loss).__name__ == loss_type
    assert {key: getattr(loss, key) for key in settings} == settings


@pytest.mark.parametrize("config", ["retina_r50.yaml", "retina_r101.yaml"])
def test_model_configs_have_the_papers_coco_settings(config):
    cfg = add_retina_config(get_cfg())
    cfg.merge_from_file(os.path.join(REPO, "configs", config))
    depth = 50 if "r50" in config else 101
    assert cfg.MODEL.META_ARCHITECTURE == "FocalRetinaNet"
    assert cfg.MODEL.RESNETS.DEPTH == depth
    assert cfg.MODEL.WEIGHTS == f"detectron2://ImageNetPretrained/MSRA/R-{depth}.pkl"
    assert cfg.DATASETS.TRAIN == ("coco_2017_train",) and cfg.DATASETS.TEST == ("coco_2017_val",)
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR) == (16, 0.01)
    assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS) == (90000, (60000, 80000))
    assert cfg.MODEL.RETINANET.IOU_THRESHOLDS == [0.4, 0.5]
    assert cfg.MODEL.RETINANET.IN_FEATURES == ["p3", "p4", "p5", "p6", "p7"]
    sizes = cfg.MODEL.ANCHOR_GENERATOR.SIZES
    assert [round(level[0]) for level in sizes] == [32, 64, 128, 256, 512]
    for level in sizes:
        assert [round(s / level[0], 4) for s in level] == [1.0, 1.2599, 1.5874]
    assert cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS == [[0.5, 1.0, 2.0]]


def test_a_detectron2_retinanet_yaml_runs_by_changing_the_meta_architecture_alone():
    cfg = add_retina_config(get_cfg())
    cfg.merge_from_file(get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml"))
    cfg.MODEL.META_ARCHITECTURE = "FocalRetinaNet"
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    assert isinstance(model, retina_plugin.FocalRetinaNet)
    assert (model.cls_loss.alpha, model.cls_loss.gamma) == (0.25, 2.0)


def test_yaml_python_tags_are_refused_and_run_nothing(tmp_path):
    marker = tmp_path / "ran"
    base = tmp_path / "base.yaml"
    base.write_text(
        "MODEL:\n"
        "  RETINANET:\n"
        f"    NUM_CLASSES: !!python/object/apply:os.system [\"touch {marker}\"]\n"
    )
    child = tmp_path / "child.yaml"
    child.write_text('_BASE_: "base.yaml"\nMODEL:\n  RETINANET:\n    PRIOR_PROB: 0.02\n')
    cfg = add_retina_config(get_cfg())
    with pytest.raises(ConfigValueError, match=r"base\.yaml, line 3: .*python/object/apply.*--allow-unsafe-yaml"):
        retina_plugin.merge_config_file(cfg, str(child))
    assert not marker.exists()


def test_plain_yaml_merges_and_trusted_tags_can_be_allowed(tmp_path):
    cfg = add_retina_config(get_cfg())
    retina_plugin.merge_config_file(cfg, os.path.join(REPO, "configs", "retina_r50.yaml"))
    assert cfg.MODEL.META_ARCHITECTURE == "FocalRetinaNet"
    # detectron2's own Base-RetinaNet.yaml computes its anchor sizes with an eval tag: read by
    # the restricted interpreter, the same numbers as Python's eval with --allow-unsafe-yaml.
    zoo = get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml")
    restricted, trusted = add_retina_config(get_cfg()), add_retina_config(get_cfg())
    retina_plugin.merge_config_file(restricted, zoo)
    retina_plugin.merge_config_file(trusted, zoo, allow_python_tags=True)
    assert restricted.MODEL.ANCHOR_GENERATOR.SIZES == trusted.MODEL.ANCHOR_GENERATOR.SIZES
    assert round(restricted.MODEL.ANCHOR_GENERATOR.SIZES[0][1], 3) == 40.317
    with pytest.raises(ConfigValueError, match="nowhere.yaml' does not exist"):
        retina_plugin.merge_config_file(cfg, str(tmp_path / "nowhere.yaml"))


def model_zoo_retinanet_yamls():
    import detectron2.model_zoo

    root = os.path.join(os.path.dirname(detectron2.model_zoo.__file__), "configs")
    found = []
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".yaml") and "retinanet" in name.lower():
                found.append(os.path.relpath(os.path.join(folder, name), root))
    return sorted(found)


def test_model_zoo_has_retinanet_yamls():
    assert "COCO-Detection/retinanet_R_101_FPN_3x.yaml" in model_zoo_retinanet_yamls()
    assert len(model_zoo_retinanet_yamls()) >= 5


@pytest.mark.parametrize("name", model_zoo_retinanet_yamls())
def test_every_model_zoo_retinanet_yaml_builds_a_focal_retinanet(name):
    cfg = add_retina_config(get_cfg())
    retina_plugin.merge_config_file(cfg, get_config_file(name))
    retina_plugin.merge_config_list(cfg, ["MODEL.META_ARCHITECTURE", "FocalRetinaNet", "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    assert isinstance(model, retina_plugin.FocalRetinaNet)
    assert model.anchor_generator.num_anchors == [9] * 5


@pytest.mark.parametrize(
    "expression, reason",
    [
        ("__import__('os').system('touch ran')", "a function call"),
        ("[x for x in [1]].__class__", "an attribute ('__class__')"),
        ("open", "the name 'open'"),
        ("[x * y for x in [1, 2]]", "the name 'y'"),
        ("'a' * 3", "the constant 'a' (not a number)"),
        ("[0] * 10", "the operator Mult is applied to lists"),
        ("10 ** 10 ** 10", "too large to compute"),
        ("[x for x in [1, 2] if x > 1]", "a condition"),
        ("lambda: 0", "a Lambda expression"),
        ("1 +", "not a Python expression"),
    ],
)
def test_an_eval_tag_with_anything_else_is_refused_with_line_and_reason(tmp_path, expression, reason):
    config = tmp_path / "bad.yaml"
    config.write_text(f"MODEL:\n  ANCHOR_GENERATOR:\n    SIZES: !!python/object/apply:eval [{json.dumps(expression)}]\n")
    with pytest.raises(ConfigValueError) as error:
        retina_plugin.merge_config_file(add_retina_config(get_cfg()), str(config))
    message = str(error.value)
    assert "bad.yaml, line 3: !!python/object/apply:eval" in message and reason in message, message
    assert not (tmp_path / "ran").exists()


def test_restricted_eval_computes_what_python_does():
    from retina_plugin.yaml_eval import restricted_eval

    for expression in (
        "[[x, x * 2**(1.0/3), x * 2**(2.0/3) ] for x in [32, 64, 128, 256, 512 ]]",
        "[[x, y] for x in [1, 2] for y in (3, -4.5)]",
        "((1 + 2) * 3 / 4 - -5, [2 ** -1])",
    ):
        assert restricted_eval(expression) == eval(expression)  # noqa: S307 (the reference)
    # Outside a config load, yaml.safe_load still refuses the tag.
    import yaml

    with pytest.raises(yaml.constructor.ConstructorError):
        yaml.safe_load('a: !!python/object/apply:eval ["1 + 1"]')


def test_all_problems_are_reported_at_once():
    cfg = tiny_cfg()
    cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA = -1.0
    cfg.MODEL.RETINANET.PRIOR_PROB = 2.0
    cfg.MODEL.RETINANET.IOU_LABELS = [0, 1]
    cfg.MODEL.RETINANET.CLS_LOSS_TYPE = "focla"
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[8, 10], [16], [32, 40], [64, 80], [128, 160]]
    with pytest.raises(ConfigValueError) as error:
        build_model(cfg)
    message = str(error.value)
    assert message.startswith("4 config problems:")
    for key in ("PRIOR_PROB = 2.0", "IOU_LABELS = [0, 1]", "CLS_LOSS_TYPE = 'focla'", "SIZES"):
        assert key in message, key
    assert "same number of anchors (sizes x aspect ratios; here [6, 3, 6, 6, 6])" in message
    # The loss's own keys are checked once the loss is known: fixing its name reveals them.
    cfg.MODEL.RETINANET.CLS_LOSS_TYPE = "focal"
    with pytest.raises(ConfigValueError, match="FOCAL_LOSS_GAMMA = -1.0"):
        build_model(cfg)


def test_a_whole_number_is_taken_for_a_float_key():
    cfg = add_retina_config(get_cfg())
    retina_plugin.merge_config_list(cfg, ["MODEL.RETINANET.FOCAL_LOSS_GAMMA", "0", "SOLVER.MAX_ITER", "10"])
    assert cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA == 0.0 and isinstance(cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA, float)
    assert cfg.SOLVER.MAX_ITER == 10 and isinstance(cfg.SOLVER.MAX_ITER, int)
