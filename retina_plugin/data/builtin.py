"""
The plugin's built-in data set, registered by `import retina_plugin` like detectron2's builtin
ones: "retina_shapes_train" and "retina_shapes_val", dense synthetic shapes (see synthetic.py).
The files are generated on first use under $DETECTRON2_DATASETS/retina_shapes_v1 (default
./datasets), then read from there.
"""
import logging
import os
import shutil
import tempfile

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .synthetic import make_categories, write_synthetic_coco

logger = logging.getLogger(__name__)

SHAPE_CATEGORIES = [{"id": c["id"], "name": c["name"]} for c in make_categories(6)]
# Bump when the generator or the splits change, so that no stale cache is read.
CACHE_FOLDER = "retina_shapes_v2"
# Object sides in pixels, on 160 x 160 images: P3 to P5 of the quickstart's anchors.
SHAPE_SIZES = (12, 64)
# name: (split folder, number of images, seed)
SHAPE_SPLITS = {
    "retina_shapes_train": ("train", 1000, 0),
    "retina_shapes_val": ("val", 100, 1),
}


def datasets_root():
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def shapes_split_paths(name):
    """(json file, image folder) of a registered shapes split."""
    split = SHAPE_SPLITS[name][0]
    root = os.path.join(datasets_root(), CACHE_FOLDER, split)
    return os.path.join(root, "annotations.json"), os.path.join(root, "images")


def ensure_shapes_split(name):
    """Generate the split's files unless they are there; return (json file, image folder)."""
    json_file, image_root = shapes_split_paths(name)
    if os.path.isfile(json_file):
        return json_file, image_root
    split, num_images, seed = SHAPE_SPLITS[name]
    split_root = os.path.dirname(json_file)
    logger.info(f"Generating {name} ({num_images} images) into {split_root} ...")
    os.makedirs(os.path.dirname(split_root), exist_ok=True)
    # Written beside the target, then renamed, so an interrupted or concurrent generation
    # never leaves a half-written split that a later run would take for a finished one.
    tmp = tempfile.mkdtemp(prefix=f".{split}-", dir=os.path.dirname(split_root))
    try:
        write_synthetic_coco(
            os.path.join(tmp, "images"),
            os.path.join(tmp, "annotations.json"),
            SHAPE_CATEGORIES,
            num_images,
            seed=seed,
            sizes=SHAPE_SIZES,
            progress=True,
        )
        try:
            os.rename(tmp, split_root)
        except OSError:
            if not os.path.isfile(json_file):  # not another process that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return json_file, image_root


def _load_shapes(name):
    json_file, image_root = ensure_shapes_split(name)
    # Known only now ($DETECTRON2_DATASETS is read at load time): COCOEvaluator reads it.
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root)
    return load_coco_json(json_file, image_root, name)


def register_shapes():
    for name in SHAPE_SPLITS:
        if name in DatasetCatalog.list():
            continue
        DatasetCatalog.register(name, lambda name=name: _load_shapes(name))
        MetadataCatalog.get(name).set(
            thing_classes=[c["name"] for c in SHAPE_CATEGORIES], evaluator_type="coco"
        )
