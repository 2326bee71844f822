"""
Your own COCO-format data, with no Python to write: `train_net.py --dataset NAME JSON IMAGE_DIR`
registers NAME, after checking that the files are what detectron2's COCO loader expects.
"""
import contextlib
import json
import math
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances


class DatasetError(ValueError):
    """A data set the plugin cannot use; the message names the file and the fix."""


def read_coco_categories(json_file, image_root):
    """Check that `json_file` is a COCO detection json whose annotations use its categories,
    and that `image_root` is a folder. Return its categories sorted by id."""
    if not os.path.isfile(json_file):
        raise DatasetError(f"COCO json {json_file!r} does not exist: check the path.")
    if not os.path.isdir(image_root):
        raise DatasetError(f"Image folder {image_root!r} (for {json_file}) does not exist.")
    try:
        with open(json_file) as f:
            coco = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{json_file} is not a JSON file ({e}).") from None
    lists = ("images", "annotations", "categories")
    missing = [k for k in lists if not isinstance(coco, dict) or not isinstance(coco.get(k), list)]
    if missing:
        raise DatasetError(
            f"{json_file} is not a COCO detection json: it needs the lists {missing} "
            f"(see https://cocodataset.org/#format-data)."
        )
    categories = sorted(coco["categories"], key=lambda c: c.get("id", 0))
    if not categories or any("id" not in c or "name" not in c for c in categories):
        raise DatasetError(f"{json_file}: 'categories' must be a non-empty list of {{id, name}}.")
    ids = [c["id"] for c in categories]
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{json_file}: category ids are not unique: {ids}.")
    check_annotation_numbers(json_file, coco["annotations"])
    used = {a.get("category_id") for a in coco["annotations"]}
    unknown = sorted(used - set(ids), key=str)
    if unknown:
        raise DatasetError(
            f"{json_file}: annotations use category ids {unknown} that are not in its "
            f"'categories' (ids {ids}). Add those categories or fix the annotations."
        )
    return categories


def _finite_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_annotation_numbers(json_file, annotations):
    """Every annotation's bbox is 4 finite numbers (and its area, if any, one): NaN, inf,
    strings or nulls would reach the loss as NaN, or fail deep in the data loader."""
    bad = []
    for annotation in annotations:
        bbox, area = annotation.get("bbox"), annotation.get("area", 0)
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_finite_number, bbox))):
            bad.append((annotation, "bbox", bbox))
        elif not _finite_number(area):
            bad.append((annotation, "area", area))
    if bad:
        annotation, key, value = bad[0]
        raise DatasetError(
            f"{json_file}: {len(bad)} annotation(s) with values that are not finite numbers, "
            f"e.g. annotation {annotation.get('id')} (image {annotation.get('image_id')}) has "
            f"{key} {json.dumps(value)}. A bbox is 4 finite numbers [x, y, width, height] and "
            f"an area one number: fix or remove these annotations."
        )


def explain_empty_training_set(names, filter_empty=True) -> str:
    """Why detectron2 found nothing to train on in the data sets `names`: a message with the
    number of images, what was dropped and why, and what to check."""
    from detectron2.data import DatasetCatalog

    lines = []
    for name in names:
        records = DatasetCatalog.get(name)
        annotations = [r.get("annotations", []) for r in records]
        empty = sum(1 for a in annotations if not a)
        crowd_only = sum(1 for a in annotations if a and all(x.get("iscrowd", 0) for x in a))
        lines.append(
            f"{name!r}: {len(records)} images; {empty} without annotations"
            + (" (dropped: DATALOADER.FILTER_EMPTY_ANNOTATIONS is True)" if filter_empty else "")
            + f", {crowd_only} with only crowd annotations (dropped)"
        )
    return (
        "Nothing to train on in DATASETS.TRAIN: " + "; ".join(lines) + ". Check that the json's "
        "annotations refer to its images' ids (image_id), that they are not all iscrowd, and "
        "that the data set is the one you meant."
    )


@contextlib.contextmanager
def explained_empty_training_set(names, filter_empty=True):
    """detectron2's bare `AssertionError: No valid data found` turned into a DatasetError
    that says why (explain_empty_training_set)."""
    try:
        yield
    except AssertionError as e:
        if "No valid data found" not in str(e):
            raise
        raise DatasetError(explain_empty_training_set(list(names), filter_empty)) from None


# Metadata keys that name the files of detectron2's builtin data sets (COCO, LVIS, VOC,
# Cityscapes, ADE20K...), set when detectron2 registers them under $DETECTRON2_DATASETS.
DATASET_PATH_KEYS = ("json_file", "image_root", "dirname", "gt_dir", "image_dir", "sem_seg_root", "panoptic_root", "panoptic_json")


def check_datasets_present(names):
    """Raise DatasetError, before anything is built, for a data set that is not registered or
    whose files are not on this machine, with the paths expected and how to get them."""
    from .builtin import builtin_split_names

    generated = builtin_split_names()
    missing = {}
    for name in dict.fromkeys(names):
        if name in generated:
            continue  # the plugin's own, generated on first use
        if name not in DatasetCatalog.list():
            raise DatasetError(
                f"Data set {name!r} is not registered. Name one of detectron2's builtin data sets "
                f"or the plugin's (retina_shapes_train, retina_sparse_train, ...), or register "
                f"your own COCO json with --dataset {name} JSON IMAGE_DIR."
            )
        metadata = MetadataCatalog.get(name)
        paths = [metadata.get(key) for key in DATASET_PATH_KEYS if isinstance(metadata.get(key, None), str)]
        absent = [p for p in paths if not os.path.exists(p)]
        if absent:
            missing[name] = absent
    if missing:
        root = os.environ.get("DETECTRON2_DATASETS")
        where = f"DETECTRON2_DATASETS={root!r}" if root else "DETECTRON2_DATASETS is not set, so ./datasets"
        listed = "; ".join(f"{name!r} expects {', '.join(paths)}" for name, paths in missing.items())
        raise DatasetError(
            f"Data set files are not on this machine: {listed} ({where}). Download the data set "
            f"and lay it out as detectron2's datasets/README.md describes, under "
            f"$DETECTRON2_DATASETS; or run `make quickstart` to train on the plugin's built-in "
            f"data instead."
        )


def register_coco_dataset(name, json_file, image_root):
    """Register a COCO-format data set under `name` after checking it; return its categories."""
    categories = read_coco_categories(json_file, image_root)
    if name in DatasetCatalog.list():
        raise DatasetError(f"Data set name {name!r} is already registered: choose another name.")
    register_coco_instances(name, {}, json_file, image_root)
    MetadataCatalog.get(name).set(thing_classes=[c["name"] for c in categories])
    return categories


def take_dataset_classes(cfg, categories_by_name, opts=()):
    """Set MODEL.RETINANET.NUM_CLASSES to the class count of the first of `categories_by_name`
    ({name: categories} of --dataset files) that cfg.DATASETS trains or tests on, unless the
    KEY VALUE `opts` set it (then check_num_classes checks it). train_net.py and the ablation
    runner both resolve a config this way."""
    used = [n for n in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST) if n in categories_by_name]
    if used and "MODEL.RETINANET.NUM_CLASSES" not in list(opts)[::2]:
        cfg.MODEL.RETINANET.NUM_CLASSES = len(categories_by_name[used[0]])
    return cfg


def check_num_classes(cfg, check=None):
    """Check that every data set of cfg.DATASETS whose classes are known has
    MODEL.RETINANET.NUM_CLASSES of them: report to check(ok, key, value, allowed) (see
    config.check_config_value), or raise DatasetError without one."""
    num_classes = cfg.MODEL.RETINANET.NUM_CLASSES
    for name in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST):
        classes = MetadataCatalog.get(name).get("thing_classes", None)
        if classes is None or len(classes) == num_classes:
            continue
        allowed = f"data set {name!r} has {len(classes)} categories: set it to {len(classes)}"
        if check is None:
            raise DatasetError(f"MODEL.RETINANET.NUM_CLASSES = {num_classes}, but {allowed}.")
        check(False, "MODEL.RETINANET.NUM_CLASSES", num_classes, allowed)
