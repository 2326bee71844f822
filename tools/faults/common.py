"""What every fault of tools/inject_faults.py uses: train_net.py run as a user would, tiny data."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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


def eval_only(work, data, weights, *opts, name="tiny"):
    return train_net(work, "--eval-only", *dataset_args(data, name), *TINY, "MODEL.WEIGHTS",
                     weights, *opts, "OUTPUT_DIR", os.path.join(work, "eval"))


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
