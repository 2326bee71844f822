"""Faults of the data: images, annotations, data sets that are not there."""
import json
import os
import subprocess
import sys

from .common import REPO, TINY, dataset_args, eval_only, last_line_with, train_net, write_png_claiming


def fault_missing_image(work, data):
    os.rename(data / "images" / "train" / "000002.png", data / "images" / "train" / "gone.png")
    os.rename(data / "images" / "val" / "000002.png", data / "images" / "val" / "gone.png")
    try:
        code, log = train_net(work, *dataset_args(data), *TINY, "SOLVER.MAX_ITER", "4",
                              "DATASETS.TEST", "()", "OUTPUT_DIR", os.path.join(work, "out"))
        trained = code == 0 and "Skipping image" in log
        weights = os.path.join(work, "out", "model_final.pth")
        code_eval, log_eval = eval_only(work, data, weights, name="tiny2")
        stopped = code_eval != 0 and "cannot be read" in log_eval
    finally:
        os.rename(data / "images" / "train" / "gone.png", data / "images" / "train" / "000002.png")
        os.rename(data / "images" / "val" / "gone.png", data / "images" / "val" / "000002.png")
    what = "training: skipped with a warning naming it; evaluation: stopped naming it"
    return trained and stopped, what if trained and stopped else last_line_with(log + log_eval, "Error"), False


def fault_bad_category(work, data):
    coco = json.loads((data / "train.json").read_text())
    coco["annotations"][0]["category_id"] = 99
    bad = data / "bad.json"
    bad.write_text(json.dumps(coco))
    code, log = train_net(work, "--dataset", "bad_train", str(bad), str(data / "images"),
                          "DATASETS.TRAIN", '("bad_train",)', *TINY, "OUTPUT_DIR", os.path.join(work, "out"))
    handled = code != 0 and "category ids [99]" in log and "Starting training" not in log
    return handled, last_line_with(log, "category ids"), False


def fault_nonfinite_annotation(work, data):
    coco = json.loads((data / "train.json").read_text())
    coco["annotations"][0]["bbox"][2] = float("nan")
    coco["annotations"][1]["bbox"][0] = "12"
    bad = data / "nonfinite.json"
    bad.write_text(json.dumps(coco))
    code, log = train_net(work, "--dataset", "nan_train", str(bad), str(data / "images"),
                          "DATASETS.TRAIN", '("nan_train",)', *TINY, "OUTPUT_DIR", os.path.join(work, "out"))
    handled = code != 0 and "not finite numbers" in log and "Starting training" not in log
    return handled, last_line_with(log, "not finite numbers"), False


def fault_decompression_bomb(work, data):
    for split in ("train", "val"):
        os.rename(data / "images" / split / "000002.png", data / "images" / split / "kept.png")
        write_png_claiming(data / "images" / split / "000002.png", 40000, 40000)
    try:
        code, log = train_net(work, *dataset_args(data), *TINY, "SOLVER.MAX_ITER", "4",
                              "DATASETS.TEST", "()", "OUTPUT_DIR", os.path.join(work, "out"))
        trained = code == 0 and "Skipping image" in log and "exceeds limit" in log
        code_eval, log_eval = eval_only(work, data, os.path.join(work, "out", "model_final.pth"), name="bomb")
        stopped = code_eval != 0 and "exceeds limit" in log_eval
    finally:
        for split in ("train", "val"):
            os.replace(data / "images" / split / "kept.png", data / "images" / split / "000002.png")
    what = "training: skipped with a warning naming it; evaluation: stopped naming it"
    return trained and stopped, what if trained and stopped else last_line_with(log + log_eval, "Error"), False


def fault_nothing_to_train_on(work, data):
    coco = json.loads((data / "train.json").read_text())
    for annotation in coco["annotations"]:
        annotation["iscrowd"] = 1
    crowd = data / "crowd.json"
    crowd.write_text(json.dumps(coco))
    code, log = train_net(work, "--dataset", "crowd_train", str(crowd), str(data / "images"),
                          "DATASETS.TRAIN", '("crowd_train",)', "DATASETS.TEST", "()", *TINY,
                          "OUTPUT_DIR", os.path.join(work, "out"))
    handled = code != 0 and "Nothing to train on" in log and "Traceback" not in log
    return handled, last_line_with(log, "Nothing to train on"), False


def fault_missing_builtin_data(work, data):
    command = [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file",
               os.path.join(REPO, "configs", "retina_r101.yaml"), "OUTPUT_DIR", os.path.join(work, "out")]
    proc = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONWARNINGS="ignore", DETECTRON2_DATASETS=os.path.join(work, "none")))
    log = proc.stdout + proc.stderr
    handled = proc.returncode != 0 and "make quickstart" in log and "Traceback" not in log
    return handled, last_line_with(log, "Data set files are not on this machine"), False
