"""
Your own COCO-format data, with no Python to write: `train_net.py --dataset NAME JSON IMAGE_DIR`
registers NAME, after checking that the files are what detectron2's COCO loader expects.
"""
import json
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
    used = {a.get("category_id") for a in coco["annotations"]}
    unknown = sorted(used - set(ids), key=str)
    if unknown:
        raise DatasetError(
            f"{json_file}: annotations use category ids {unknown} that are not in its "
            f"'categories' (ids {ids}). Add those categories or fix the annotations."
        )
    return categories


def register_coco_dataset(name, json_file, image_root):
    """Register a COCO-format data set under `name` after checking it; return its categories."""
    categories = read_coco_categories(json_file, image_root)
    if name in DatasetCatalog.list():
        raise DatasetError(f"Data set name {name!r} is already registered: choose another name.")
    register_coco_instances(name, {}, json_file, image_root)
    MetadataCatalog.get(name).set(thing_classes=[c["name"] for c in categories])
    return categories


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
