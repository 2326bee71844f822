#!/usr/bin/env python
"""
Run each fault of the reliability issue against a tiny config, through train_net.py as a user
would, and print what happened and whether any data was lost.

    .venv/bin/python tools/inject_faults.py [--keep DIR]

Every fault runs in a fresh folder of a temporary workspace (kept with --keep), on a tiny COCO
data set written there. "Data lost" means: a checkpoint or result that existed before the fault
is gone or broken afterwards, or training work after the last checkpoint is not recoverable.
"""
import argparse
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from retina_plugin.data import make_categories, write_synthetic_coco  # noqa: E402

TINY = [
    "SEED", "0", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2",
    "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "96",
    "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "96",
]


def train_net(work, *args, timeout=600):
    command = [sys.executable, os.path.join(REPO, "train_net.py"),
               "--config-file", os.path.join(REPO, "configs", "quickstart.yaml"), *args]
    proc = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    return proc.returncode, proc.stdout + proc.stderr


def dataset_args(data, name="tiny"):
    return ["--dataset", f"{name}_train", str(data / "train.json"), str(data / "images"),
            "--dataset", f"{name}_val", str(data / "val.json"), str(data / "images"),
            "DATASETS.TRAIN", f'("{name}_train",)', "DATASETS.TEST", f'("{name}_val",)']


def last_line_with(log, *needles):
    for line in reversed(log.splitlines()):
        if any(n in line for n in needles):
            return line.strip()[:150]
    return log.strip().splitlines()[-1][:150] if log.strip() else ""


def make_data(root):
    from pathlib import Path

    root = Path(root)
    categories = [{"id": c["id"], "name": c["name"]} for c in make_categories(3)]
    for split, seed in (("train", 0), ("val", 1)):
        write_synthetic_coco(root / "images" / split, root / f"{split}.json", categories, 4,
                             image_size=(96, 96), objects=(3, 6), distractors=(0, 2),
                             sizes=(12, 36), empty_prob=0.0, seed=seed)
        coco = json.loads((root / f"{split}.json").read_text())
        for image in coco["images"]:
            image["file_name"] = f"{split}/{image['file_name']}"
        (root / f"{split}.json").write_text(json.dumps(coco))
    return root


def trained_checkpoint(work, data):
    out = os.path.join(work, "trained")
    code, log = train_net(work, *dataset_args(data, "base"), *TINY, "SOLVER.MAX_ITER", "4",
                          "DATASETS.TEST", "()", "OUTPUT_DIR", out)
    assert code == 0, log[-3000:]
    return os.path.join(out, "model_final.pth")


def fault_bad_config(work, data):
    code, log = train_net(work, *dataset_args(data), *TINY, "MODEL.RETINANET.FOCAL_LOSS_GAMMA",
                          "-1.0", "MODEL.RETINANET.PRIOR_PROB", "2.0", "MODEL.RETINANET.IOU_LABELS",
                          "[0, 1]", "OUTPUT_DIR", os.path.join(work, "out"))
    handled = code != 0 and "3 config problems" in log and "Starting training" not in log
    return handled, last_line_with(log, "config problems"), False


def fault_yaml_python_tag(work, data):
    marker = os.path.join(work, "code_ran")
    config = os.path.join(work, "evil.yaml")
    with open(config, "w") as f:
        f.write(f'_BASE_: "{REPO}/configs/quickstart.yaml"\nSEED: !!python/object/apply:os.system ["touch {marker}"]\n')
    proc = subprocess.run([sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", config],
                          cwd=work, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    log = proc.stdout + proc.stderr
    handled = proc.returncode != 0 and "without running Python code" in log and not os.path.exists(marker)
    return handled, last_line_with(log, "without running Python code"), False


def fault_nan_loss(work, data):
    out = os.path.join(work, "out")
    code, log = train_net(work, *dataset_args(data), *TINY, "SOLVER.MAX_ITER", "60",
                          "SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.BASE_LR", "1e6",
                          "SOLVER.WARMUP_ITERS", "0", "SOLVER.CLIP_GRADIENTS.ENABLED", "False",
                          "OUTPUT_DIR", out)
    with open(os.path.join(out, "last_checkpoint")) as f:
        last = os.path.join(out, f.read().strip())
    import torch

    intact = torch.load(last, map_location="cpu", weights_only=True)["iteration"] >= 0
    handled = code != 0 and "Likely causes" in log and intact
    return handled, last_line_with(log, "Loss became infinite", "Likely causes"), not intact


def fault_kill_9(work, data):
    out = os.path.join(work, "out")
    args = [*dataset_args(data), *TINY, "SOLVER.MAX_ITER", "40", "SOLVER.CHECKPOINT_PERIOD", "5",
            "DATASETS.TEST", "()", "OUTPUT_DIR", out]
    command = [sys.executable, os.path.join(REPO, "train_net.py"),
               "--config-file", os.path.join(REPO, "configs", "quickstart.yaml"), *args]
    proc = subprocess.Popen(command, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not os.path.exists(os.path.join(out, "model_0000009.pth")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with open(os.path.join(out, "last_checkpoint")) as f:
        last = f.read().strip()
    code, log = train_net(work, "--resume", *args)
    resumed = last in log  # detectron2 logs the checkpoint it resumes from
    done = os.path.exists(os.path.join(out, "model_final.pth"))
    return code == 0 and done, f"killed after {last}; --resume: {last_line_with(log, 'Starting training')}", not (resumed and done)


def fault_interrupted_checkpoint_write(work, data):
    import torch

    from detectron2.modeling import build_model

    sys.path.insert(0, os.path.join(REPO, "tests"))
    from helpers import tiny_cfg

    from retina_plugin.checkpoint import SafeDetectionCheckpointer

    checkpointer = SafeDetectionCheckpointer(build_model(tiny_cfg()), save_dir=work)
    checkpointer.save("model_final", iteration=1)
    before = open(os.path.join(work, "model_final.pth"), "rb").read()
    real_save = torch.save

    def killed(obj, f):
        real_save(obj, f)
        f.truncate(f.tell() // 2)
        raise KeyboardInterrupt

    torch.save = killed
    try:
        checkpointer.save("model_final", iteration=2)
    except KeyboardInterrupt:
        pass
    finally:
        torch.save = real_save
    kept = open(os.path.join(work, "model_final.pth"), "rb").read() == before
    return kept, "write killed halfway: previous model_final.pth unchanged" if kept else "file replaced", not kept


def eval_only(work, data, weights, *opts, name="tiny"):
    return train_net(work, "--eval-only", *dataset_args(data, name), *TINY, "MODEL.WEIGHTS",
                     weights, *opts, "OUTPUT_DIR", os.path.join(work, "eval"))


def fault_crafted_checkpoint(work, data):
    marker = os.path.join(work, "code_ran")

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = os.path.join(work, "evil.pkl")
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": RunsCode()}, "__author__": "x"}, f)
    code, log = eval_only(work, data, path)
    handled = code != 0 and "was refused" in log and not os.path.exists(marker)
    return handled, last_line_with(log, "was refused"), False


def fault_truncated_checkpoint(work, data, checkpoint):
    path = os.path.join(work, "cut.pth")
    with open(checkpoint, "rb") as f:
        whole = f.read()
    with open(path, "wb") as f:
        f.write(whole[: len(whole) // 2])
    code, log = eval_only(work, data, path)
    return code != 0 and "cannot be read" in log, last_line_with(log, "cannot be read"), False


def fault_mismatched_checkpoint(work, data, checkpoint):
    code, log = eval_only(work, data, checkpoint, "MODEL.FPN.OUT_CHANNELS", "32")
    handled = code != 0 and "does not fit this model" in log
    return handled, last_line_with(log, "does not fit this model"), False


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


def fault_two_cpu_processes(work, data):
    code, log = train_net(work, "--num-gpus", "2", *dataset_args(data), *TINY, "SOLVER.MAX_ITER", "3",
                          "OUTPUT_DIR", os.path.join(work, "out"))
    ok = code == 0 and "copypaste: AP" in log
    return ok, "2 processes over gloo trained and evaluated" if ok else last_line_with(log, "Error"), False


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


def write_png_claiming(path, width, height):
    """A real PNG whose header says width x height: PIL's decompression-bomb guard reads it."""
    import struct
    import zlib

    from PIL import Image

    Image.new("RGB", (8, 8), (200, 30, 30)).save(path)
    raw = bytearray(open(path, "rb").read())
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(raw[24:29])
    raw[12:29] = header
    raw[29:33] = struct.pack(">I", zlib.crc32(header))
    open(path, "wb").write(bytes(raw))


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


def fault_resume_other_config(work, data):
    out = os.path.join(work, "out")
    args = [*dataset_args(data), *TINY, "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()", "OUTPUT_DIR", out]
    train_net(work, *args)
    before = {n: os.path.getmtime(os.path.join(out, n)) for n in os.listdir(out) if n != ".lock"}
    code, log = train_net(work, "--resume", *args, "MODEL.RETINANET.CLS_LOSS_TYPE", "softmax_focal")
    after = {n: os.path.getmtime(os.path.join(out, n)) for n in os.listdir(out) if n != ".lock"}
    handled = code != 0 and "trained with another config" in log and before == after
    return handled, last_line_with(log, "--resume would continue"), before != after


def fault_two_runs_one_output_dir(work, data):
    out = os.path.join(work, "out")
    args = [*dataset_args(data), *TINY, "DATASETS.TEST", "()", "OUTPUT_DIR", out]
    command = [sys.executable, os.path.join(REPO, "train_net.py"),
               "--config-file", os.path.join(REPO, "configs", "quickstart.yaml"), *args, "SOLVER.MAX_ITER", "100000"]
    first = subprocess.Popen(command, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not os.path.exists(os.path.join(out, "metrics.json")):
        time.sleep(0.2)
    code, log = train_net(work, *args, "SOLVER.MAX_ITER", "2")
    first.send_signal(signal.SIGKILL)  # a killed run leaves no stale lock:
    first.wait()
    code_after, _ = train_net(work, *args, "SOLVER.MAX_ITER", "2")
    handled = code != 0 and f"in use by another run (pid {first.pid}" in log and code_after == 0
    return handled, last_line_with(log, "in use by another run") + " (after kill -9 of the first: a new run starts)", False


def fault_missing_builtin_data(work, data):
    command = [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file",
               os.path.join(REPO, "configs", "retina_r101.yaml"), "OUTPUT_DIR", os.path.join(work, "out")]
    proc = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONWARNINGS="ignore", DETECTRON2_DATASETS=os.path.join(work, "none")))
    log = proc.stdout + proc.stderr
    handled = proc.returncode != 0 and "make quickstart" in log and "Traceback" not in log
    return handled, last_line_with(log, "Data set files are not on this machine"), False


def fault_disk_full(work, data):
    disk = os.path.join(work, "disk")
    os.makedirs(disk, exist_ok=True)
    # Room for one checkpoint of the quickstart model (27 MB with SGD's momentum), not two.
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", disk], capture_output=True).returncode == 0
    if not mounted:
        return False, "not run: mounting a small tmpfs is not allowed here (tests/test_faults.py simulates it)", False
    try:
        code, log = train_net(work, *dataset_args(data), *TINY, "SOLVER.MAX_ITER", "12",
                              "SOLVER.CHECKPOINT_PERIOD", "5", "DATASETS.TEST", "()", "OUTPUT_DIR", disk)
        intact = os.path.join(disk, "model_0000004.pth")
        import torch

        ok = torch.load(intact, map_location="cpu", weights_only=True)["iteration"] == 4
        handled = code != 0 and "No space left on device" in log and f"intact: {intact}" in log and ok
        return handled, last_line_with(log, "Could not write checkpoint"), not ok
    finally:
        subprocess.run(["umount", "-l", disk], capture_output=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", help="a folder to keep the workspace in")
    args = parser.parse_args()
    root = args.keep or tempfile.mkdtemp(prefix="retina_faults_")
    data = make_data(os.path.join(root, "data"))
    os.makedirs(os.path.join(root, "base"), exist_ok=True)
    checkpoint = trained_checkpoint(os.path.join(root, "base"), data)

    faults = [
        ("bad config values (gamma -1, PRIOR_PROB 2, IOU_LABELS)", fault_bad_config, ()),
        ("yaml with a Python object tag", fault_yaml_python_tag, ()),
        ("loss becomes NaN (lr 1e6)", fault_nan_loss, ()),
        ("kill -9 during training, then --resume", fault_kill_9, ()),
        ("checkpoint write interrupted", fault_interrupted_checkpoint_write, ()),
        ("checkpoint crafted to run code", fault_crafted_checkpoint, ()),
        ("--eval-only with a truncated checkpoint", fault_truncated_checkpoint, (checkpoint,)),
        ("--eval-only with a mismatched checkpoint", fault_mismatched_checkpoint, (checkpoint,)),
        ("missing image file", fault_missing_image, ()),
        ("json with an unknown category id", fault_bad_category, ()),
        ("--num-gpus 2 without CUDA", fault_two_cpu_processes, ()),
        ("annotations that are not finite numbers (NaN, a string)", fault_nonfinite_annotation, ()),
        ("image too large to decode safely (decompression bomb)", fault_decompression_bomb, ()),
        ("nothing to train on (all annotations crowd)", fault_nothing_to_train_on, ()),
        ("--resume into an OUTPUT_DIR trained with another loss", fault_resume_other_config, ()),
        ("two runs in one OUTPUT_DIR at once", fault_two_runs_one_output_dir, ()),
        ("configs/retina_r101.yaml without COCO on the machine", fault_missing_builtin_data, ()),
        ("disk full while writing a checkpoint (40 MB tmpfs)", fault_disk_full, ()),
    ]
    rows = []
    for name, run, extra in faults:
        work = os.path.join(root, name.split()[0].strip("-") + str(len(rows)))
        os.makedirs(work, exist_ok=True)
        try:
            handled, what, lost = run(work, data, *extra)
        except Exception as e:  # a fault the plugin does not handle is a result too
            handled, what, lost = False, f"{type(e).__name__}: {e}"[:150], True
        rows.append((name, "handled" if handled else "NOT HANDLED", what, "yes" if lost else "no"))
        print(f"{rows[-1][1]:>11}  {name}", file=sys.stderr, flush=True)

    print(f"\n| fault | result | what happened | data lost |\n|---|---|---|---|")
    for name, result, what, lost in rows:
        print(f"| {name} | {result} | {what.replace('|', '/')} | {lost} |")
    print(f"\nworkspace: {root}")


if __name__ == "__main__":
    main()
