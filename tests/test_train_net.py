"""train_net.py end to end: train the real configs/retina_r101.yaml, shrunk, on a tiny COCO
written where detectron2's builtin coco_2017_* names look for it, then --eval-only."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

from retina_plugin.data import builtin, write_synthetic_coco

from helpers import REPO

pytestmark = pytest.mark.slow

COCO_THINGS = [c for c in COCO_CATEGORIES if c["isthing"]]

# R-101 stays R-101 (depth 101): only widths, image sizes and the schedule shrink. With no
# pretrained weights, FrozenBN would normalise nothing (features of 1e6, saturated scores):
# GroupNorm is detectron2's choice for training from scratch.
TINY = [
    "SEED", "0",
    "MODEL.WEIGHTS", "",
    "MODEL.DEVICE", "cpu",
    "MODEL.RESNETS.NORM", "GN",
    "MODEL.RESNETS.WIDTH_PER_GROUP", "32",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "32",
    "MODEL.FPN.OUT_CHANNELS", "32",
    "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MAX_SIZE_TRAIN", "96",
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "96",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.BASE_LR", "0.001",
    "SOLVER.MAX_ITER", "2",
    "SOLVER.STEPS", "()",
    "SOLVER.WARMUP_ITERS", "1",
    "DATALOADER.NUM_WORKERS", "0",
]


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    """A tiny COCO in DETECTRON2_DATASETS/coco, laid out as detectron2's builtin names expect."""
    root = tmp_path_factory.mktemp("datasets")
    for split, num_images, seed in (("train2017", 4, 0), ("val2017", 2, 1)):
        write_synthetic_coco(
            root / "coco" / split,
            root / "coco" / "annotations" / f"instances_{split}.json",
            COCO_THINGS[:6],
            num_images,
            image_size=(64, 80),
            objects=(1, 4),
            distractors=(0, 2),
            sizes=(16, 40),
            empty_prob=0.0,
            seed=seed,
        )
        # Keep all 80 categories in the json, as in the real COCO files.
        path = root / "coco" / "annotations" / f"instances_{split}.json"
        coco = json.loads(path.read_text())
        coco["categories"] = [{"id": c["id"], "name": c["name"]} for c in COCO_THINGS]
        path.write_text(json.dumps(coco))
    return root


def load_tool(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_train_net(args, datasets):
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets), PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "train_net.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    return output


def reported_bbox_ap(output):
    """The bbox AP line of COCOEvaluator's copypaste output: "AP,AP50,AP75,APs,APm,APl"."""
    match = re.search(r"copypaste: AP,AP50,AP75,APs,APm,APl\n.*copypaste: ([^\n]+)", output)
    assert match, output[-3000:]
    return match.group(1)


def test_train_then_eval_only_with_the_r101_config(coco_root, tmp_path):
    config = os.path.join(REPO, "configs", "retina_r101.yaml")
    out = tmp_path / "run"
    # Scores of an untrained model sit near PRIOR_PROB: keep every candidate so AP is computed.
    evaluate_all = ["MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"]
    train_log = run_train_net(
        ["--config-file", config, *TINY, *evaluate_all, "OUTPUT_DIR", str(out)], coco_root
    )
    assert "FocalRetinaNet" in train_log and "RetinaHead" in train_log

    checkpoint = out / "model_final.pth"
    assert checkpoint.is_file()
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert state["iteration"] == 1 and "head.cls_score.weight" in state["model"]
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    trained = [m for m in metrics if "loss_cls" in m]
    assert trained and all(k in trained[-1] for k in ("num_pos_anchors", "loss_normalizer"))
    assert all(torch.isfinite(torch.tensor(m["loss_cls"])) for m in trained)
    # Training ended with COCOEvaluator on coco_2017_val (APl is nan: no large objects).
    ap = float(reported_bbox_ap(train_log).split(",")[0])
    assert 0 <= ap <= 100

    eval_out = tmp_path / "eval"
    eval_log = run_train_net(
        [
            "--config-file", config, "--eval-only", *TINY, *evaluate_all,
            "MODEL.WEIGHTS", str(checkpoint), "OUTPUT_DIR", str(eval_out),
        ],
        coco_root,
    )
    assert "Starting training" not in eval_log
    # The run's curves: tools/plot_metrics.py plots exactly the numbers of metrics.json.
    plot_metrics = load_tool("plot_metrics")
    plotted = plot_metrics.plot_run(str(out))
    assert {"losses.png", "lr.png", "focal.png", "ap.png"} <= set(plotted)
    assert all((out / "plots" / name).is_file() for name in plotted)
    xs, ys = plotted["losses.png"]["loss_cls"]
    assert list(zip(xs, ys)) == [(m["iteration"], m["loss_cls"]) for m in trained]
    assert plotted["ap.png"]["bbox/AP"][1] == [float(reported_bbox_ap(train_log).split(",")[0])]

    # The checkpoint reproduces the evaluation at the end of training, detection for detection.
    assert reported_bbox_ap(eval_log) == reported_bbox_ap(train_log)
    detections = (eval_out / "inference" / "coco_instances_results.json").read_text()
    assert len(json.loads(detections)) > 0
    assert detections == (out / "inference" / "coco_instances_results.json").read_text()


def test_loss_variant_from_configs_losses(coco_root, tmp_path):
    out = tmp_path / "run"
    log = run_train_net(
        [
            "--config-file", os.path.join(REPO, "configs", "retina_r101.yaml"),
            "--extra-config", os.path.join(REPO, "configs", "losses", "balanced_ce.yaml"),
            *TINY, "SOLVER.MAX_ITER", "1", "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()",
            "OUTPUT_DIR", str(out),
        ],
        coco_root,
    )
    assert "FocalLoss(alpha=0.75, gamma=0.0)" in log


def write_own_dataset(root, num_categories):
    from retina_plugin.data import make_categories

    categories = [{"id": 10 + c["id"], "name": c["name"]} for c in make_categories(num_categories)]
    for split, seed in (("train", 0), ("val", 1)):
        write_synthetic_coco(
            root / split, root / f"{split}.json", categories, 3,
            image_size=(64, 64), objects=(2, 5), distractors=(0, 2), sizes=(10, 30),
            empty_prob=0.0, seed=seed,
        )
    return root


QUICK = ["SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
         "DATALOADER.NUM_WORKERS", "0", "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
         "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64", "SEED", "0"]


def test_own_coco_data_from_the_command_line(tmp_path):
    data = write_own_dataset(tmp_path / "mine", num_categories=3)
    out = tmp_path / "run"
    log = run_train_net(
        [
            "--config-file", os.path.join(REPO, "configs", "quickstart.yaml"),
            "--dataset", "mine_train", str(data / "train.json"), str(data / "train"),
            "--dataset", "mine_val", str(data / "val.json"), str(data / "val"),
            *QUICK, "DATASETS.TRAIN", '("mine_train",)', "DATASETS.TEST", '("mine_val",)',
            "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0", "OUTPUT_DIR", str(out),
        ],
        tmp_path,
    )
    # NUM_CLASSES came from the json (3), not from quickstart.yaml (6).
    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    num_anchors = 9
    assert state["model"]["head.cls_score.weight"].shape[0] == 3 * num_anchors
    assert "Evaluation results for mine_val" in log
    float(reported_bbox_ap(log).split(",")[0])


def test_num_classes_given_on_the_command_line_must_match_the_json(tmp_path):
    data = write_own_dataset(tmp_path / "mine", num_categories=2)
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path), PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [
            sys.executable, os.path.join(REPO, "train_net.py"),
            "--config-file", os.path.join(REPO, "configs", "quickstart.yaml"),
            "--dataset", "mine_train", str(data / "train.json"), str(data / "train"),
            *QUICK, "DATASETS.TRAIN", '("mine_train",)', "DATASETS.TEST", "()",
            "MODEL.RETINANET.NUM_CLASSES", "5", "OUTPUT_DIR", str(tmp_path / "run"),
        ],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    assert "NUM_CLASSES = 5 is not allowed: data set 'mine_train' has 2 categories" in proc.stderr
    assert "Starting training" not in proc.stdout + proc.stderr


def test_builtin_shapes_train_a_few_iterations(tmp_path):
    # The val split is the small one (100 images): train on it to keep the test short.
    out = tmp_path / "run"
    log = run_train_net(
        [
            "--config-file", os.path.join(REPO, "configs", "quickstart.yaml"), *QUICK,
            "DATASETS.TRAIN", '("retina_shapes_val",)', "DATASETS.TEST", "()",
            "OUTPUT_DIR", str(out),
        ],
        tmp_path,
    )
    assert "Generating retina_shapes_val" in log
    assert (tmp_path / builtin.BUILTIN_SETS["retina_shapes"].folder / "val" / "annotations.json").is_file()
    assert (out / "model_final.pth").is_file()


def test_amp_without_cuda_is_a_clear_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "train_net.py"),
         "--config-file", os.path.join(REPO, "configs", "quickstart.yaml"),
         "SOLVER.AMP.ENABLED", "True", "OUTPUT_DIR", str(tmp_path)],
        cwd=REPO, env=dict(os.environ, DETECTRON2_DATASETS=str(tmp_path), PYTHONWARNINGS="ignore"),
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    assert "SOLVER.AMP.ENABLED = True is not allowed without CUDA" in proc.stderr


def test_a_bad_config_is_one_clear_message_without_traceback_or_dependency_warnings(tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path))
    env.pop("PYTHONWARNINGS", None)  # the warnings train_net.py shows by itself
    proc = subprocess.run(
        [sys.executable, "-W", "default", os.path.join(REPO, "train_net.py"),
         "--config-file", os.path.join(REPO, "configs", "quickstart.yaml"),
         "MODEL.RETINANET.FOCAL_LOSS_GAMMA", "-1", "OUTPUT_DIR", str(tmp_path / "run")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.endswith("\n") and "Traceback" not in proc.stderr
    assert "train_net.py: ConfigValueError: MODEL.RETINANET.FOCAL_LOSS_GAMMA = -1.0 is not allowed" in proc.stderr
    assert "torch.jit.script" not in proc.stderr and "pkg_resources" not in proc.stderr
    # The plugin's own warnings still show.
    proc = subprocess.run(
        [sys.executable, "-W", "default", "-c", "import retina_plugin, warnings; warnings.warn('from the plugin')"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert "UserWarning: from the plugin" in proc.stderr and "torch.jit.script" not in proc.stderr
