"""
The plugin's built-in data sets, registered by `import retina_plugin` like detectron2's builtin
ones as "<set>_train" and "<set>_val": synthetic shapes (see synthetic.py), generated on first
use under $DETECTRON2_DATASETS/<folder> (default ./datasets), then read from there.

- retina_shapes: dense (8-30 objects per image, 6 classes), the quickstart's. About 400
  negative (anchor, class) pairs per positive pair: far less imbalanced than COCO.
- retina_sparse: the paper's regime (1-3 objects per image, 48 classes), about 2.5 x 10^4
  negative pairs per positive, between VOC and COCO.
- retina_imbalance_k12, _k24, _k48_single: the same generator with other numbers of classes
  and objects per image, the points of the imbalance sweep (ablations, grid "imbalance").

`tools/measure_imbalance.py` measures each set's imbalance as training sees it.
"""
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .synthetic import COLORS, MORE_SHAPES, SHAPES, make_categories, make_grid_categories, write_synthetic_coco

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyntheticSet:
    """A built-in data set: what write_synthetic_coco draws, and its splits."""

    folder: str  # under $DETECTRON2_DATASETS; bump its version when anything here changes
    styles: List[dict]  # one {"id", "name", "shape", "color"} per class
    splits: Dict[str, Tuple[int, int]]  # split: (number of images, seed)
    objects: Tuple[int, int]
    distractors: Tuple[int, int] = (4, 12)
    sizes: Tuple[int, int] = (12, 64)  # object sides in px: the quickstart's anchors start at 12
    empty_prob: float = 0.0
    distractor_shapes: Tuple[str, ...] = SHAPES
    description: str = ""

    @property
    def categories(self):
        return [{"id": c["id"], "name": c["name"]} for c in self.styles]


def _grid_set(folder, num_colors, objects, description):
    # Classes: the six shapes of the quickstart in the first colours, so that a detector can
    # learn shapes and colours from every class that has them (a usable AP in minutes despite
    # the few objects). Distractors: a class's shape in another colour, or one of the other
    # four shapes (never a class; each close to a class's shape) in a class's colour.
    return SyntheticSet(
        folder=folder,
        styles=make_grid_categories(SHAPES, list(COLORS)[:num_colors]),
        splits={"train": (4000, 0), "val": (500, 1)},
        objects=objects,
        distractors=(2, 5),
        sizes=(16, 64),
        distractor_shapes=SHAPES + MORE_SHAPES,
        description=description,
    )


BUILTIN_SETS: Dict[str, SyntheticSet] = {
    "retina_shapes": SyntheticSet(
        folder="retina_shapes_v2",
        styles=make_categories(6),
        splits={"train": (1000, 0), "val": (100, 1)},
        objects=(8, 30),
        empty_prob=0.05,
        description="dense: 8-30 objects per image, 6 classes (the quickstart's)",
    ),
    "retina_imbalance_k12": _grid_set("retina_imbalance_k12_v2", 2, (4, 10), "4-10 objects per image, 12 classes"),
    "retina_imbalance_k24": _grid_set("retina_imbalance_k24_v2", 4, (2, 4), "2-4 objects per image, 24 classes"),
    "retina_sparse": _grid_set(
        "retina_sparse_v2", 8, (1, 3), "the paper's regime: 1-3 objects per image, 48 classes"
    ),
    "retina_imbalance_k48_single": _grid_set(
        "retina_imbalance_k48_single_v2", 8, (1, 1), "1 object per image, 48 classes"
    ),
}

# Kept for the quickstart's code and tests: its classes.
SHAPE_CATEGORIES = BUILTIN_SETS["retina_shapes"].categories


def builtin_split_names():
    """{registered name: (set name, split)}, e.g. "retina_sparse_val": ("retina_sparse", "val")."""
    return {f"{name}_{split}": (name, split) for name, spec in BUILTIN_SETS.items() for split in spec.splits}


def datasets_root():
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def shapes_split_paths(name):
    """(json file, image folder) of a registered built-in split."""
    set_name, split = builtin_split_names()[name]
    root = os.path.join(datasets_root(), BUILTIN_SETS[set_name].folder, split)
    return os.path.join(root, "annotations.json"), os.path.join(root, "images")


def ensure_shapes_split(name):
    """Generate the split's files unless they are there; return (json file, image folder)."""
    json_file, image_root = shapes_split_paths(name)
    if os.path.isfile(json_file):
        return json_file, image_root
    set_name, split = builtin_split_names()[name]
    spec = BUILTIN_SETS[set_name]
    num_images, seed = spec.splits[split]
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
            spec.categories,
            num_images,
            objects=spec.objects,
            distractors=spec.distractors,
            sizes=spec.sizes,
            empty_prob=spec.empty_prob,
            seed=seed,
            progress=True,
            styles=spec.styles,
            distractor_shapes=spec.distractor_shapes,
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
    for name, (set_name, _) in builtin_split_names().items():
        if name in DatasetCatalog.list():
            continue
        DatasetCatalog.register(name, lambda name=name: _load_shapes(name))
        MetadataCatalog.get(name).set(
            thing_classes=[c["name"] for c in BUILTIN_SETS[set_name].categories],
            evaluator_type="coco",
        )
