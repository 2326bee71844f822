import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.config import get_cfg
from detectron2.modeling import build_model

import retina_plugin
from retina_plugin import demo
from retina_plugin.checkpoint import SafeDetectionCheckpointer
from retina_plugin.data import SHAPE_CATEGORIES, make_categories, write_synthetic_coco

from helpers import REPO


@pytest.fixture
def quickstart_checkpoint(tmp_path):
    """The quickstart model after a few SGD steps on one image: a trained tiny model."""
    from detectron2.utils.events import EventStorage
    from detectron2.data import DatasetMapper, get_detection_dataset_dicts
    from detectron2.data.datasets import register_coco_instances

    cfg = retina_plugin.add_retina_config(get_cfg())
    cfg.merge_from_file(os.path.join(REPO, "configs", "quickstart.yaml"))
    categories = [{"id": c["id"], "name": c["name"]} for c in make_categories(len(SHAPE_CATEGORIES))]
    write_synthetic_coco(tmp_path / "images", tmp_path / "a.json", categories, 1, seed=3, empty_prob=0.0)
    register_coco_instances("demo_train", {}, str(tmp_path / "a.json"), str(tmp_path / "images"))
    batch = [DatasetMapper(cfg, is_train=True)(d) for d in get_detection_dataset_dicts(["demo_train"])]
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with EventStorage():
        for _ in range(5):
            optimizer.zero_grad()
            sum(model(batch).values()).backward()
            optimizer.step()
    SafeDetectionCheckpointer(model, save_dir=str(tmp_path)).save("tiny")
    return tmp_path / "tiny.pth", tmp_path / "images"


def test_demo_draws_detections_and_writes_their_json(quickstart_checkpoint, tmp_path):
    weights, images = quickstart_checkpoint
    out = tmp_path / "out"
    results = demo.main(
        [
            "--config-file", os.path.join(REPO, "configs", "quickstart.yaml"),
            "--weights", str(weights), "--input", str(images), "--output", str(out),
            "--confidence-threshold", "0.02",
        ]
    )
    saved = json.loads((out / "detections.json").read_text())
    assert saved == json.loads(json.dumps(results))
    (path, detections), = saved.items()
    assert detections, "a threshold of 0.02 keeps some boxes"
    names = {c["name"] for c in SHAPE_CATEGORIES}
    for d in detections:
        assert len(d["box"]) == 4 and d["box"][0] <= d["box"][2] and d["box"][1] <= d["box"][3]
        assert d["class_name"] in names and 0.02 <= d["score"] <= 1
    before = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
    after = np.asarray(Image.open(out / os.path.basename(path)).convert("RGB"), dtype=np.int16)
    assert after.shape == before.shape
    changed = np.abs(after - before).sum(axis=2) > 0
    x0, y0, x1, y1 = (int(round(v)) for v in detections[0]["box"])
    # The first box's outline is drawn: its edge pixels changed.
    assert changed[max(y0, 0):y1 + 1, max(x0, 0):x1 + 1].any()
