"""Every config key the plugin reads, checked before anything is built, all problems at once."""
from detectron2.modeling import META_ARCH_REGISTRY

from .config import ConfigValueError
from .evaluation import COCO_EVAL_ENGINES
from .head import RETINA_HEAD_REGISTRY
from .losses import CLS_LOSS_REGISTRY


class _Problems:
    """A `check(ok, key, value, allowed)` (see config.check_config_value) that collects."""

    def __init__(self):
        self.messages = []

    def __call__(self, ok, key, value, allowed):
        if not ok:
            self.messages.append(f"{key} = {value!r} is not allowed: {allowed}.")


def check_anchors_and_matching(cfg, check):
    retinanet, anchors = cfg.MODEL.RETINANET, cfg.MODEL.ANCHOR_GENERATOR
    thresholds, labels = list(retinanet.IOU_THRESHOLDS), list(retinanet.IOU_LABELS)
    check(
        thresholds == sorted(thresholds) and all(0 <= t <= 1 for t in thresholds),
        "MODEL.RETINANET.IOU_THRESHOLDS",
        thresholds,
        "use increasing IoUs in [0, 1] (the paper: [0.4, 0.5])",
    )
    check(
        len(labels) == len(thresholds) + 1 and set(labels) <= {-1, 0, 1},
        "MODEL.RETINANET.IOU_LABELS",
        labels,
        f"use {len(thresholds) + 1} labels, one per IoU interval of IOU_THRESHOLDS, each -1 "
        f"(ignored), 0 (background) or 1 (object) (the paper: [0, -1, 1])",
    )
    levels = len(retinanet.IN_FEATURES)
    sizes, ratios = [list(s) for s in anchors.SIZES], [list(r) for r in anchors.ASPECT_RATIOS]
    for key, value in (("SIZES", sizes), ("ASPECT_RATIOS", ratios)):
        check(
            len(value) in (1, levels) and all(v and all(x > 0 for x in v) for v in value),
            f"MODEL.ANCHOR_GENERATOR.{key}",
            value,
            f"give one list of positive numbers for all levels, or one per level of "
            f"MODEL.RETINANET.IN_FEATURES ({levels})",
        )
    if len(sizes) in (1, levels) and len(ratios) in (1, levels):
        per_level = [
            len(sizes[i if len(sizes) > 1 else 0]) * len(ratios[i if len(ratios) > 1 else 0])
            for i in range(levels)
        ]
        check(
            len(set(per_level)) == 1,
            "MODEL.ANCHOR_GENERATOR.SIZES",
            sizes,
            f"every level needs the same number of anchors (sizes x aspect ratios; here "
            f"{per_level}), since one head is shared by all levels",
        )


def validate_config(cfg, datasets=False):
    """
    Check every key the plugin reads (loss, head, normaliser, matching, anchors, registry
    names, and with `datasets` NUM_CLASSES against cfg.DATASETS' categories), and raise one
    ConfigValueError that lists all the problems, each with key, value and what is allowed.
    """
    from .data.custom import check_num_classes  # the data package imports the models' config

    problems = _Problems()
    retinanet = cfg.MODEL.RETINANET
    if cfg.MODEL.META_ARCHITECTURE in META_ARCH_REGISTRY:
        meta_architecture = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
        if hasattr(meta_architecture, "check_config"):
            meta_architecture.check_config(cfg, problems)
    check_anchors_and_matching(cfg, problems)
    problems(
        cfg.TEST.COCO_EVAL_ENGINE in COCO_EVAL_ENGINES,
        "TEST.COCO_EVAL_ENGINE",
        cfg.TEST.COCO_EVAL_ENGINE,
        f"choose one of {', '.join(COCO_EVAL_ENGINES)}",
    )
    for registry, key in (
        (RETINA_HEAD_REGISTRY, "MODEL.RETINANET.HEAD_NAME"),
        (CLS_LOSS_REGISTRY, "MODEL.RETINANET.CLS_LOSS_TYPE"),
    ):
        try:
            component = registry.get_by_config(key, getattr(retinanet, key.rsplit(".", 1)[1]))
        except ConfigValueError as e:
            problems.messages.append(str(e))
            continue
        if hasattr(component, "check_config"):
            component.check_config(cfg, problems)
    if datasets:
        check_num_classes(cfg, problems)
    if len(problems.messages) == 1:
        raise ConfigValueError(problems.messages[0])
    if problems.messages:
        raise ConfigValueError(
            f"{len(problems.messages)} config problems:\n  - " + "\n  - ".join(problems.messages)
        )
