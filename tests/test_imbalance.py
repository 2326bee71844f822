"""The imbalance meter (retina_plugin/imbalance.py, tools/measure_imbalance.py) and the R that
training logs, on a data set whose anchors and matches are counted by hand."""
import json
import math
import os

import pytest
import torch

from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from retina_plugin.config import get_retina_cfg
from retina_plugin.imbalance import initial_losses, negative_pairs_per_positive

from helpers import REPO
from test_train_net import load_tool

# One square anchor per location (8 px on P3 ... 128 px on P7, centred on multiples of the
# stride), 64 x 64 images that are neither resized nor padded: 8x8 + 4x4 + 2x2 + 1 + 1 = 86
# anchors per image.
HAND_CONFIG = [
    "MODEL.ANCHOR_GENERATOR.SIZES", "[[8], [16], [32], [64], [128]]",
    "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", "[[1.0]]",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
    "MODEL.RETINANET.NUM_CLASSES", "3",
]
# Image 1: a box equal to the P3 anchor at (16, 16): 1 positive (its P4 anchor has IoU 0.25).
# Image 2: a 12 px box at (16, 16): its P4 anchor (IoU 0.56) is positive, its P3 anchor
# (IoU 0.44) ignored; and a box equal to the P3 anchor at (48, 48): 1 positive.
BOXES = {1: [(0, [12, 12, 20, 20])], 2: [(1, [10, 10, 22, 22]), (2, [44, 44, 52, 52])]}
ANCHORS, POSITIVE, IGNORED, K = 2 * 86, 3, 1, 3
NEGATIVE = ANCHORS - POSITIVE - IGNORED
HAND_R = (K * NEGATIVE + (K - 1) * POSITIVE) / POSITIVE  # (3 * 168 + 2 * 3) / 3 = 170


def write_hand_dataset(folder):
    (folder / "images").mkdir(parents=True)
    coco = {
        "images": [{"id": i, "file_name": f"{i}.png", "height": 64, "width": 64} for i in BOXES],
        "annotations": [
            {"id": 10 * i + n, "image_id": i, "category_id": c + 1, "iscrowd": 0,
             "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)}
            for i, boxes in BOXES.items() for n, (c, (x0, y0, x1, y1)) in enumerate(boxes)
        ],
        "categories": [{"id": c + 1, "name": f"class {c}"} for c in range(K)],
    }
    (folder / "hand.json").write_text(json.dumps(coco))
    return folder / "hand.json", folder / "images"


def test_pairs_and_initial_losses_formulas():
    assert HAND_R == 170
    assert negative_pairs_per_positive(NEGATIVE, POSITIVE, K) == HAND_R
    assert negative_pairs_per_positive(100, 0, K) == math.inf
    losses = initial_losses(HAND_R, prior_prob=0.01)
    assert losses["ce_standard_init"] == pytest.approx((HAND_R + 1) * math.log(2))
    assert losses["ce_prior_init"] == pytest.approx(-math.log(0.01) - HAND_R * math.log(0.99))
    focal = 0.25 * 0.99**2 * -math.log(0.01) + HAND_R * 0.75 * 0.01**2 * -math.log(0.99)
    assert losses["focal_prior_init"] == pytest.approx(focal)


def test_meter_counts_a_hand_counted_data_set(tmp_path):
    json_file, images = write_hand_dataset(tmp_path)
    out = tmp_path / "imbalance.json"
    tool = load_tool("measure_imbalance")
    report = tool.main([
        "--config-file", os.path.join(REPO, "configs", "quickstart.yaml"),
        "--dataset", "hand_counted", str(json_file), str(images), "--dataset-name", "hand_counted",
        "--output", str(out), *HAND_CONFIG,
    ])
    assert report["images"] == 2 and report["classes"] == K
    assert report["anchors_per_image"]["median"] == 86
    assert report["positive_anchors_per_image"] == {"median": 1.5, "p10": 1.1, "p90": 1.9, "mean": 1.5}
    assert report["ignored_anchors_per_image"]["mean"] == 0.5
    assert report["negative_pairs_per_positive"] == pytest.approx(HAND_R)
    assert report["initial_loss_per_positive"]["ce_standard_init"] == pytest.approx(171 * math.log(2))
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))


def test_meter_resizes_with_the_test_transform(tmp_path):
    # Images twice as large, shrunk to 64 px by the test transform: the same anchors match.
    json_file, images = write_hand_dataset(tmp_path)
    coco = json.loads(json_file.read_text())
    for image in coco["images"]:
        image["height"] = image["width"] = 128
    for ann in coco["annotations"]:
        ann["bbox"] = [2 * v for v in ann["bbox"]]
    json_file.write_text(json.dumps(coco))
    report = load_tool("measure_imbalance").main([
        "--config-file", os.path.join(REPO, "configs", "quickstart.yaml"),
        "--dataset", "hand_counted_x2", str(json_file), str(images), "--dataset-name", "hand_counted_x2",
        "--output", str(tmp_path / "x2.json"), *HAND_CONFIG,
    ])
    assert report["anchors_per_image"]["median"] == 86
    assert report["negative_pairs_per_positive"] == pytest.approx(HAND_R)


def test_training_logs_the_same_ratio():
    from detectron2.modeling import build_model

    cfg = get_retina_cfg(os.path.join(REPO, "configs", "quickstart.yaml"), HAND_CONFIG)
    model = build_model(cfg)
    model.train()
    batch = []
    for boxes in BOXES.values():
        instances = Instances((64, 64))
        instances.gt_boxes = Boxes(torch.tensor([b for _, b in boxes], dtype=torch.float32))
        instances.gt_classes = torch.tensor([c for c, _ in boxes])
        batch.append({"image": torch.zeros(3, 64, 64), "instances": instances})
    with EventStorage() as storage:
        model(batch)
    assert storage.history("neg_pairs_per_pos").latest() == pytest.approx(HAND_R)
    assert storage.history("num_pos_anchors").latest() == POSITIVE / 2
