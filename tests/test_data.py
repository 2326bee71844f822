import dataclasses
import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from retina_plugin import add_retina_config
from retina_plugin.data import (
    SHAPE_CATEGORIES,
    DatasetError,
    check_num_classes,
    make_categories,
    make_grid_categories,
    register_coco_dataset,
    write_synthetic_coco,
)
from retina_plugin.data import builtin

CATEGORIES = [{"id": c["id"], "name": c["name"]} for c in make_categories(4)]


def digest(folder):
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            h.update(name.encode())
            with open(os.path.join(root, name), "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def write(folder, seed=0, **kwargs):
    kwargs.setdefault("num_images", 6)
    coco = write_synthetic_coco(folder / "images", folder / "a.json", CATEGORIES, seed=seed, **kwargs)
    return coco


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    write(tmp_path / "a", seed=3)
    write(tmp_path / "b", seed=3)
    write(tmp_path / "c", seed=4)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


def test_pycocotools_reads_it_and_the_boxes_fit_the_images(tmp_path):
    write(tmp_path, num_images=8, image_size=(96, 128), objects=(10, 20), sizes=(8, 40))
    coco = COCO(str(tmp_path / "a.json"))
    assert sorted(coco.getCatIds()) == [1, 2, 3, 4]
    for image_id in coco.getImgIds():
        info = coco.loadImgs(image_id)[0]
        pixels = np.asarray(Image.open(tmp_path / "images" / info["file_name"]))
        assert pixels.shape == (96, 128, 3)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and x + w <= 128 and y + h <= 96
            assert 4 <= min(w, h) and max(w, h) <= 40 * 1.5 + 1
            assert ann["category_id"] in (1, 2, 3, 4) and ann["area"] == w * h


def test_dense_imbalanced_with_several_scales_and_empty_images(tmp_path):
    coco = write(
        tmp_path, num_images=40, image_size=(160, 160), objects=(8, 30), sizes=(8, 64), empty_prob=0.1
    )
    per_image = np.bincount([a["image_id"] for a in coco["annotations"]], minlength=41)[1:]
    assert (per_image == 0).sum() >= 1, "some images are empty"
    assert np.median(per_image[per_image > 0]) >= 10, "dozens of objects, not a handful"
    sides = np.array([max(a["bbox"][2:]) for a in coco["annotations"]])
    # Objects on several FPN levels: P3 (< 32 px), P4 (32-64 px) and larger.
    assert (sides < 16).mean() > 0.2 and (sides >= 32).mean() > 0.1
    assert len({a["category_id"] for a in coco["annotations"]}) == 4
    # Imbalance of the problem: objects cover a minority of the pixels.
    covered = sum(a["area"] for a in coco["annotations"]) / (40 * 160 * 160)
    assert covered < 0.4


def test_builtin_shapes_names_resolve_and_generate_once(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    small = dataclasses.replace(builtin.BUILTIN_SETS["retina_shapes"], splits={"train": (5, 0), "val": (5, 1)})
    monkeypatch.setitem(builtin.BUILTIN_SETS, "retina_shapes", small)
    assert "retina_shapes_train" in DatasetCatalog.list()
    meta = MetadataCatalog.get("retina_shapes_val")
    assert meta.thing_classes == [c["name"] for c in SHAPE_CATEGORIES]

    dicts = DatasetCatalog.get("retina_shapes_val")
    assert len(dicts) == 5 and os.path.isfile(dicts[0]["file_name"])
    assert meta.json_file.startswith(str(tmp_path))
    json_file = meta.json_file
    mtime = os.path.getmtime(json_file)
    assert DatasetCatalog.get("retina_shapes_val") == dicts  # read from the cache
    assert os.path.getmtime(json_file) == mtime
    assert not [n for n in os.listdir(os.path.dirname(os.path.dirname(json_file))) if n.startswith(".")]


@pytest.mark.parametrize("name", ["retina_sparse", "retina_imbalance_k12", "retina_imbalance_k48_single"])
def test_sparse_builtin_sets_generate_their_classes_and_objects(tmp_path, monkeypatch, name):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    spec = builtin.BUILTIN_SETS[name]
    monkeypatch.setitem(builtin.BUILTIN_SETS, name, dataclasses.replace(spec, splits={"train": (30, 0), "val": (4, 1)}))
    dicts = DatasetCatalog.get(f"{name}_train")
    assert MetadataCatalog.get(f"{name}_val").thing_classes == [c["name"] for c in spec.categories]
    # Classes are distinct (shape, colour) pairs; the objects per image stay in their range.
    pairs = {(c["shape"], c["color"]) for c in spec.styles}
    assert len(pairs) == len(spec.styles)
    per_image = [len(d["annotations"]) for d in dicts]
    assert min(per_image) >= 1 and max(per_image) <= spec.objects[1]
    low, _ = spec.sizes
    assert all(min(a["bbox"][2:]) >= 0.6 * low for d in dicts for a in d["annotations"])
    assert os.path.isfile(dicts[0]["file_name"])


def test_grid_categories_and_new_shapes_draw(tmp_path):
    styles = make_grid_categories(["hexagon", "star"], ["red", "blue"])
    assert [s["name"] for s in styles] == ["red hexagon", "red star", "blue hexagon", "blue star"]
    with pytest.raises(ValueError, match="unknown shapes or colours"):
        make_grid_categories(["blob"], ["red"])
    coco = write_synthetic_coco(
        tmp_path / "images", tmp_path / "a.json", [{"id": s["id"], "name": s["name"]} for s in styles], 4,
        objects=(3, 3), distractors=(6, 6), styles=styles, distractor_shapes=("hexagon", "star", "wedge", "half_disc"),
        empty_prob=0.0, seed=0,
    )
    assert len(coco["annotations"]) == 12
    pixels = np.asarray(Image.open(tmp_path / "images" / "000001.png"))
    assert pixels.std() > 10


def coco_file(folder, categories=CATEGORIES, annotations=None, **override):
    (folder / "images").mkdir(parents=True, exist_ok=True)
    data = {
        "images": [{"id": 1, "file_name": "1.png", "height": 8, "width": 8}],
        "annotations": annotations
        if annotations is not None
        else [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "area": 16, "iscrowd": 0}],
        "categories": categories,
    }
    data.update(override)
    path = folder / "a.json"
    path.write_text(json.dumps(data))
    return path


def test_register_a_coco_dataset(tmp_path):
    categories = register_coco_dataset("test_register_ok", str(coco_file(tmp_path)), str(tmp_path / "images"))
    assert [c["name"] for c in categories] == [c["name"] for c in CATEGORIES]
    assert "test_register_ok" in DatasetCatalog.list()
    assert MetadataCatalog.get("test_register_ok").thing_classes == [c["name"] for c in CATEGORIES]
    with pytest.raises(DatasetError, match="already registered"):
        register_coco_dataset("test_register_ok", str(coco_file(tmp_path)), str(tmp_path / "images"))


@pytest.mark.parametrize(
    "case,message",
    [
        ("no json", r"a\.json' does not exist"),
        ("no image folder", r"Image folder .*nowhere' .* does not exist"),
        ("not json", r"a\.json is not a JSON file"),
        ("not coco", r"a\.json is not a COCO detection json: it needs the lists \['annotations'\]"),
        ("unknown category", r"a\.json: annotations use category ids \[9\] that are not in"),
        ("duplicate ids", r"a\.json: category ids are not unique"),
    ],
)
def test_bad_data_names_the_file(tmp_path, case, message):
    image_root = tmp_path / "images"
    path = tmp_path / "a.json"
    if case == "no json":
        image_root.mkdir()
    elif case == "no image folder":
        coco_file(tmp_path)
        image_root = tmp_path / "nowhere"
    elif case == "not json":
        image_root.mkdir()
        path.write_text("images: []\n")
    elif case == "not coco":
        coco_file(tmp_path, annotations={})
    elif case == "unknown category":
        ann = {"id": 1, "image_id": 1, "category_id": 9, "bbox": [0, 0, 2, 2], "area": 4, "iscrowd": 0}
        coco_file(tmp_path, annotations=[ann])
    elif case == "duplicate ids":
        coco_file(tmp_path, categories=[{"id": 1, "name": "a"}, {"id": 1, "name": "b"}])
    with pytest.raises(DatasetError, match=message):
        register_coco_dataset(f"test_bad_{case}", str(path), str(image_root))
    assert f"test_bad_{case}" not in DatasetCatalog.list()


def test_num_classes_is_checked_against_the_datasets():
    cfg = add_retina_config(get_cfg())
    cfg.DATASETS.TRAIN = ("retina_shapes_train",)
    cfg.DATASETS.TEST = ("coco_2017_val",)
    cfg.MODEL.RETINANET.NUM_CLASSES = 6
    with pytest.raises(DatasetError, match=r"NUM_CLASSES = 6, but data set 'coco_2017_val' has 80 categories: set it to 80"):
        check_num_classes(cfg)
    cfg.DATASETS.TEST = ("retina_shapes_val",)
    check_num_classes(cfg)
