"""Bad data is skipped with a warning that names the file, or stopped with a clear error;
never a crash deep in the stack."""
import json
import logging
import os
import subprocess
import sys

import pytest

from retina_plugin.data import CheckedDatasetMapper, DatasetError, make_categories, write_synthetic_coco

from helpers import REPO, tiny_cfg


def dataset_dict(path):
    return {"file_name": str(path), "height": 64, "width": 64, "image_id": 1, "annotations": []}


@pytest.fixture
def bad_files(tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"this is not a png")
    return {"missing": tmp_path / "missing.png", "corrupt": corrupt}


class Recorder(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("kind", ["missing", "corrupt"])
def test_training_skips_an_unreadable_image_once_with_a_warning(bad_files, kind):
    mapper = CheckedDatasetMapper(tiny_cfg(), is_train=True)
    # Its own handler: detectron2's setup_logger may have stopped propagation to pytest's.
    logger, recorder = logging.getLogger("retina_plugin.data.mapper"), Recorder()
    logger.addHandler(recorder)
    try:
        assert mapper(dataset_dict(bad_files[kind])) is None
        assert mapper(dataset_dict(bad_files[kind])) is None
    finally:
        logger.removeHandler(recorder)
    assert len(recorder.messages) == 1
    assert f"Skipping image {bad_files[kind]}" in recorder.messages[0]


@pytest.mark.parametrize("kind", ["missing", "corrupt"])
def test_evaluation_stops_on_an_unreadable_image_naming_it(bad_files, kind):
    mapper = CheckedDatasetMapper(tiny_cfg(), is_train=False)
    with pytest.raises(DatasetError, match=rf"Image .*{kind}\.png cannot be read"):
        mapper(dataset_dict(bad_files[kind]))


@pytest.mark.slow
def test_training_through_every_kind_of_bad_data(tmp_path):
    categories = [{"id": c["id"], "name": c["name"]} for c in make_categories(3)]
    coco = write_synthetic_coco(
        tmp_path / "images", tmp_path / "a.json", categories, 6, image_size=(64, 64),
        objects=(3, 5), distractors=(0, 1), sizes=(12, 30), empty_prob=0.0, seed=0,
    )
    ann = coco["annotations"]
    by_image = {i: [a for a in ann if a["image_id"] == i] for i in range(1, 7)}
    by_image[1] = []  # an image without annotations
    for a in by_image[2]:
        a["iscrowd"] = 1  # crowd-only
    by_image[3].append({"bbox": [10, 10, 0, 12]})  # zero area
    by_image[3].append({"bbox": [200, 200, 30, 30]})  # outside the 64 x 64 image
    by_image[3].append({"bbox": [-40, -40, 20, 20]})  # outside, negative
    os.remove(tmp_path / "images" / coco["images"][3]["file_name"])  # image 4: missing file
    (tmp_path / "images" / coco["images"][4]["file_name"]).write_bytes(b"not an image")  # 5
    coco["annotations"] = []
    for image_id, anns in by_image.items():
        for a in anns:
            a.update(id=len(coco["annotations"]) + 1, image_id=image_id)
            a.setdefault("category_id", 1)
            a.setdefault("iscrowd", 0)
            a.setdefault("area", float(a["bbox"][2] * a["bbox"][3]))
            coco["annotations"].append(a)
    (tmp_path / "a.json").write_text(json.dumps(coco))

    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable, os.path.join(REPO, "train_net.py"),
            "--config-file", os.path.join(REPO, "configs", "quickstart.yaml"),
            "--dataset", "bad_train", str(tmp_path / "a.json"), str(tmp_path / "images"),
            "DATASETS.TRAIN", '("bad_train",)', "DATASETS.TEST", "()", "SEED", "0",
            "SOLVER.MAX_ITER", "6", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
            "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "OUTPUT_DIR", str(out),
        ],
        cwd=REPO, env=dict(os.environ, PYTHONWARNINGS="ignore"),
        capture_output=True, text=True, timeout=300,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert (out / "model_final.pth").is_file()
    # detectron2 dropped the empty and the crowd-only image; we skipped the unreadable ones.
    assert "Removed 2 images with no usable annotations. 4 images left." in log
    for image in coco["images"][3:5]:
        assert f"Skipping image {tmp_path / 'images' / image['file_name']}" in log
