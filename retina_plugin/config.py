import contextlib
import difflib
import os
import re

import yaml

from detectron2.config import CfgNode as CN

from .yaml_eval import restricted_eval_tag

# Keys that take a number or a list. yacs refuses a value of another type than the key's
# current one, so merge_config_file and merge_config_list switch the key's type first.
NUMBER_OR_LIST_KEYS = ("MODEL.RETINANET.FOCAL_LOSS_ALPHA",)


def add_retina_config(cfg):
    """
    Add the plugin's config keys to a detectron2 config.

    detectron2's own MODEL.RETINANET.* keys keep their meaning (NUM_CLASSES, IN_FEATURES,
    NUM_CONVS, IOU_THRESHOLDS, IOU_LABELS, PRIOR_PROB, FOCAL_LOSS_ALPHA, FOCAL_LOSS_GAMMA,
    SMOOTH_L1_LOSS_BETA, BBOX_REG_LOSS_TYPE, NORM, *_TEST), so a detectron2 RetinaNet yaml runs
    with this plugin once MODEL.META_ARCHITECTURE is "FocalRetinaNet".
    """
    _C = cfg
    # Head, by its name in retina_plugin.RETINA_HEAD_REGISTRY. "RetinaHead" is the paper's.
    _C.MODEL.RETINANET.HEAD_NAME = "RetinaHead"
    # Classification loss, by its name in retina_plugin.CLS_LOSS_REGISTRY. "focal" reads
    # FOCAL_LOSS_ALPHA and FOCAL_LOSS_GAMMA and covers the paper's CE, balanced CE, FL and
    # balanced FL (configs/losses/).
    #   "focal_star": FL* of the paper's appendix A (FOCAL_STAR below, FOCAL_LOSS_ALPHA);
    #   "ohem": CE on the hardest anchors only, the paper's Table 1d baseline (OHEM below);
    #   "softmax_focal": a focal loss over a softmax of K + 1 logits (background included).
    # FOCAL_LOSS_ALPHA may also be a list of NUM_CLASSES weights, one per class ("focal",
    # "focal_star"). PRIOR_PROB 0.5 is the standard initialisation (class bias 0) that the
    # paper's initialisation ablation compares with.
    _C.MODEL.RETINANET.CLS_LOSS_TYPE = "focal"
    # FL*: p*_t = sigmoid(GAMMA * x_t + BETA), loss -log(p*_t) / GAMMA.
    _C.MODEL.RETINANET.FOCAL_STAR = CN()
    _C.MODEL.RETINANET.FOCAL_STAR.GAMMA = 2.0
    _C.MODEL.RETINANET.FOCAL_STAR.BETA = 1.0
    # OHEM: per image, the BATCH_SIZE_PER_IMAGE anchors of highest CE left after NMS at
    # NMS_THRESH (1: none) over anchors scored by their loss; POSITIVE_FRACTION caps the share
    # of object anchors among them (0.25 is the paper's 1:3; -1: no cap).
    _C.MODEL.RETINANET.OHEM = CN()
    _C.MODEL.RETINANET.OHEM.BATCH_SIZE_PER_IMAGE = 128
    _C.MODEL.RETINANET.OHEM.NMS_THRESH = 0.5
    _C.MODEL.RETINANET.OHEM.POSITIVE_FRACTION = -1.0
    # The focal-loss family after the paper (retina_plugin/losses/), defaults from each paper:
    #   "quality_focal": QFL of GFL (Li et al. 2020), |y - p|^BETA times BCE to the IoU target;
    #   "varifocal": VFL (Zhang et al. 2021), positives weighted by their IoU, negatives by
    #       ALPHA * p^GAMMA;
    #   "poly1_focal": Poly-1 (Leng et al. 2022), FL + EPSILON * (1 - p_t)^(gamma + 1), with
    #       FOCAL_LOSS_ALPHA and FOCAL_LOSS_GAMMA;
    #   "ghm_c": GHM-C (Li et al. 2019), CE weighted by the inverse density of its gradient
    #       norm over BINS bins, the density a moving average with MOMENTUM.
    _C.MODEL.RETINANET.QUALITY_FOCAL = CN()
    _C.MODEL.RETINANET.QUALITY_FOCAL.BETA = 2.0
    _C.MODEL.RETINANET.VARIFOCAL = CN()
    _C.MODEL.RETINANET.VARIFOCAL.ALPHA = 0.75
    _C.MODEL.RETINANET.VARIFOCAL.GAMMA = 2.0
    _C.MODEL.RETINANET.GHM_C = CN()
    _C.MODEL.RETINANET.GHM_C.BINS = 30
    _C.MODEL.RETINANET.GHM_C.MOMENTUM = 0.75
    _C.MODEL.RETINANET.POLY1 = CN()
    _C.MODEL.RETINANET.POLY1.EPSILON = 1.0
    # How the fused losses run (retina_plugin/ops/: the focal loss, OHEM's CE, QFL, VFL, Poly-1):
    # "compiled" (one fused loop by torch.compile), "eager" (plain PyTorch over blocks of
    # anchors) or "auto" (compiled for large inputs, where it works).
    _C.MODEL.RETINANET.FOCAL_LOSS_IMPL = "auto"
    # What the summed losses are divided by:
    #   "num_pos": the paper: the batch's number of anchors assigned to a ground-truth box;
    #   "ema": detectron2: a moving average of that number, steadier with few images per GPU;
    #   "guided": Sampling-Free's guided loss scaling: the box loss divided by the positives,
    #       the class loss multiplied by stop_grad(box loss / class loss), to the box loss's size.
    # "ema" is the default so that results match detectron2's built-in RetinaNet.
    _C.MODEL.RETINANET.LOSS_NORMALIZER = "ema"
    # The moving average of "ema": new = old * MOMENTUM + num_pos * (1 - MOMENTUM), starting
    # from INIT. detectron2 fixes these at 0.9 and 100.
    _C.MODEL.RETINANET.LOSS_NORMALIZER_MOMENTUM = 0.9
    _C.MODEL.RETINANET.LOSS_NORMALIZER_INIT = 100.0
    # Sampling-Free (Chen et al. 2019; retina_plugin/sampling_free.py), for every loss:
    #   PRIOR_FROM_DATA: the class bias from the training data's measured foreground fraction
    #       per class (replaces PRIOR_PROB; measured once, cached, logged);
    #   ADAPTIVE_SCORE_THRESH: at inference a score counts above the classifier's prior
    #       (the measured one, or PRIOR_PROB) instead of SCORE_THRESH_TEST;
    # and LOSS_NORMALIZER "guided" (above), its guided loss scaling.
    _C.MODEL.RETINANET.SAMPLING_FREE = CN()
    _C.MODEL.RETINANET.SAMPLING_FREE.PRIOR_FROM_DATA = False
    _C.MODEL.RETINANET.SAMPLING_FREE.ADAPTIVE_SCORE_THRESH = False
    # The precision the class scores are computed in at inference: "float32" (detectron2's) or
    # "float64". A float32 sigmoid rounds every logit above about 16.6 to a score of exactly 1,
    # so a confident classifier's best detections tie, and which of them NMS keeps and how AP
    # ranks them is the order they happen to come in; float64 keeps the logits' order up to a
    # logit of about 36.7 (docs/findings.md, "Tied scores").
    _C.MODEL.RETINANET.SCORE_DTYPE_TEST = "float32"
    # A factor on the classification loss (mmdetection's loss_weight). 1 is detectron2's; a
    # loss that is a mean over all pairs (GHM-C) is on another scale than one divided by the
    # positive anchors, and mmdetection sums such a loss over the FPN levels (5 means).
    _C.MODEL.RETINANET.CLS_LOSS_WEIGHT = 1.0
    # What computes COCO AP behind detectron2's COCOEvaluator (retina_plugin/evaluation.py):
    # "faster_coco_eval" (C++, the same stats many times faster) or "pycocotools" (the
    # official Python one, which detectron2 falls back to without its compiled extension).
    _C.TEST.COCO_EVAL_ENGINE = "faster_coco_eval"
    return cfg


class ConfigValueError(ValueError):
    """A config value the plugin cannot use; the message names the key, the value and the fix."""


def check_config_value(ok, key, value, allowed):
    """Raise ConfigValueError naming `key`, its `value` and what is `allowed`, unless `ok`."""
    if not ok:
        raise ConfigValueError(f"{key} = {value!r} is not allowed: {allowed}.")


def unknown_key_error(cfg, key, source) -> ConfigValueError:
    """The error for a key the config does not have: where it came from, and the closest keys."""
    known = list(_flatten(yaml.safe_load(cfg.dump())))
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.75)
    if not close:  # a misspelt group (MODEL.RETINANETT.X): the keys of the same last name
        close = [k for k in known if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]][:3]
    hint = f" Did you mean {' or '.join(close)}?" if close else " Check its spelling and group."
    return ConfigValueError(f"{key} is not a config key ({source}).{hint}")


def _file_with_key(path, key, depth=0):
    """(the file of `path`'s _BASE_ chain that sets `key` or a key under it, read as plain YAML;
    that full key), or None. yacs names only the first level that does not exist."""
    loaded = _read_plain(path)
    if not isinstance(loaded, dict) or depth > 20:
        return None
    for full in _flatten(loaded):
        if full == key or full.startswith(key + "."):
            return path, full
    base = loaded.get("_BASE_")
    if isinstance(base, str):
        return _file_with_key(base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base), key, depth + 1)
    return None


class _PlainLoader(yaml.SafeLoader):
    """SafeLoader that reads any Python tag as None: only the keys matter here."""


_PlainLoader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)


def _read_plain(path):
    try:
        with open(path) as f:
            return yaml.load(f, Loader=_PlainLoader) or {}
    except (OSError, yaml.YAMLError):
        return {}


def _missing_key(error):
    """The dotted key of yacs' "Non-existent (config) key: K" error, or None for another error."""
    match = re.search(r"Non-existent (?:config )?key: (\S+)", str(error))
    return match.group(1).strip("'\"") if match else None


def merge_config_file(cfg, path, allow_python_tags=False):
    """
    cfg.merge_from_file(path), its _BASE_ files included, without running code from them.
    The !!python/object/apply:eval tag of detectron2's model-zoo yamls is evaluated by a
    restricted interpreter (numbers, arithmetic, lists, list comprehensions: yaml_eval.py);
    an eval of anything else, and every other Python tag, is refused with a clear error unless
    `allow_python_tags`, for trusted files (detectron2's own behaviour: Python's eval).
    """
    if not os.path.isfile(path):
        raise ConfigValueError(f"Config file {path!r} does not exist: check the path.")
    try:
        with contextlib.nullcontext() if allow_python_tags else restricted_eval_tag():
            loaded = cfg.load_yaml_with_base(path, allow_unsafe=allow_python_tags)
            for key in NUMBER_OR_LIST_KEYS:
                node = loaded
                for part in key.split("."):
                    node = node.get(part) if isinstance(node, dict) else None
                _match_type(cfg, key, node)
            cfg.merge_from_file(path, allow_unsafe=allow_python_tags)
    except (KeyError, AssertionError) as e:
        key = _missing_key(e)
        if key is None:
            raise
        where, key = _file_with_key(path, key) or (path, key)
        raise unknown_key_error(cfg, key, f"set in {where}") from None
    except yaml.constructor.ConstructorError as e:
        where = f"{e.problem_mark.name}, line {e.problem_mark.line + 1}" if e.problem_mark else path
        raise ConfigValueError(
            f"{where}: {e.problem}. Config files are read without running Python code from "
            f"them: write the value out instead (for example the numbers of an eval'd list), "
            f"or pass --allow-unsafe-yaml for a file you trust."
        ) from None


def merge_config_list(cfg, opts):
    """cfg.merge_from_list(opts) (KEY VALUE pairs), where NUMBER_OR_LIST_KEYS take either, and
    a whole number is taken for a key of floats (yacs refuses `FOCAL_LOSS_GAMMA 0`)."""
    opts = list(opts)
    for index in range(0, len(opts) - 1, 2):
        key, value = opts[index], opts[index + 1]
        decoded = cfg._decode_cfg_value(value)
        if key in NUMBER_OR_LIST_KEYS:
            _match_type(cfg, key, decoded)
        elif isinstance(decoded, int) and not isinstance(decoded, bool) and isinstance(_current(cfg, key), float):
            opts[index + 1] = float(decoded)
    try:
        cfg.merge_from_list(opts)
    except (KeyError, AssertionError) as e:
        key = _missing_key(e)
        if key is None:
            raise
        raise unknown_key_error(cfg, key, "given on the command line") from None


def _current(cfg, key):
    """The value of a dotted key, or None where there is none."""
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _match_type(cfg, key, new_value):
    """Give cfg's `key` the type of new_value (a number or a list), so that yacs merges it."""
    if new_value is None:
        return
    *path, name = key.split(".")
    node = cfg
    for part in path:
        node = node[part]
    old = node[name]
    if isinstance(new_value, (list, tuple)) != isinstance(old, (list, tuple)):
        node[name] = list(new_value) if isinstance(new_value, (list, tuple)) else float(new_value)


def _flatten(node, prefix=""):
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in _flatten(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def changed_keys(old_config_file, cfg, prefix="MODEL."):
    """[(key, old value, new value)] of the keys under `prefix` whose value in `cfg` differs
    from the config.yaml an earlier run wrote; [] when that file is missing or unreadable."""
    try:
        with open(old_config_file) as f:
            old = _flatten(yaml.safe_load(f) or {})
    except (OSError, yaml.YAMLError):
        return []
    new = _flatten(yaml.safe_load(cfg.dump()))
    return [(k, old.get(k), v) for k, v in new.items() if k.startswith(prefix) and old.get(k) != v]


def get_retina_cfg(config_file, opts=(), allow_python_tags=False):
    """
    A detectron2 config with the plugin's keys, `config_file` and KEY VALUE `opts` merged:
    what the plugin's tools (demo, export, figures) start from.
    """
    from detectron2.config import get_cfg

    cfg = add_retina_config(get_cfg())
    merge_config_file(cfg, config_file, allow_python_tags=allow_python_tags)
    merge_config_list(cfg, list(opts))
    return cfg
