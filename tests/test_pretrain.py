"""The pretrained backbone (retina_plugin/pretrain.py, tools/pretrain_backbone.py): made on a tiny
input, cached, loaded by configs/sparse.yaml through retina_pretrained://, and a clear error
when it has not been made."""
import os
import subprocess
import sys

import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.utils.file_io import PathManager

from retina_plugin import pretrain
from retina_plugin.config import get_retina_cfg
from retina_plugin.data.builtin import BUILTIN_SETS
from retina_plugin.ablations.runner import PRETRAINED_BACKBONE
from retina_plugin.pretrain import PRETRAIN_SEED_BASE, PRETRAIN_STYLES, file_sha256, pretrained_path, pretraining_batch

from helpers import REPO
from test_train_net import QUICK, load_tool, run_train_net, write_own_dataset

SPARSE = os.path.join(REPO, "configs", "sparse.yaml")
TINY_PRETRAINING = ["--iterations", "2", "--batch-size", "2", "--image-size", "64"]


def make_pretrained(*more):
    """tools/pretrain_backbone.py for configs/sparse.yaml on a tiny input (under the `datasets` fixture's folder)."""
    return load_tool("pretrain_backbone").main(["--config-file", SPARSE, *TINY_PRETRAINING, *more])


@pytest.fixture
def datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    return tmp_path / "datasets"


def test_batches_are_seeded_and_drawn_apart_from_every_builtin_split():
    mean, std = [100.0, 110.0, 120.0], [50.0, 50.0, 50.0]
    first, again = pretraining_batch(0, 3, 2, 64, mean, std), pretraining_batch(0, 3, 2, 64, mean, std)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], pretraining_batch(0, 4, 2, 64, mean, std)[0])
    assert first[0].shape == (2, 3, 64, 64) and first[1].shape == (2, len(PRETRAIN_STYLES)) == (2, 80)
    assert all(1 <= n <= 6 for n in first[1].sum(dim=1).tolist())
    assert all(seed < PRETRAIN_SEED_BASE for spec in BUILTIN_SETS.values() for _, seed in spec.splits.values())


def test_pretraining_writes_the_file_the_config_names_once(datasets):
    cfg = get_retina_cfg(SPARSE)
    path = pretrained_path(cfg.MODEL.WEIGHTS)
    assert path == str(datasets / "pretrained" / "basic_r18_w32_shapes80_12k.pth")
    assert make_pretrained() == 0
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert saved["pretraining"]["iterations"] == 2 and saved["pretraining"]["seed"] == 0
    weights = saved["model"]
    assert weights and all(k.startswith("backbone.bottom_up.") for k in weights)
    assert not any(k.endswith("num_batches_tracked") for k in weights)

    # Cached: a second call trains nothing.
    mtime = os.path.getmtime(path)
    assert make_pretrained() == 0 and os.path.getmtime(path) == mtime
    # Seeded: the same flags write the same weights.
    again = datasets / "again.pth"
    make_pretrained("--output", str(again))
    assert all(torch.equal(v, torch.load(again, weights_only=True)["model"][k]) for k, v in weights.items())

    # The detector from configs/sparse.yaml takes every backbone weight; FPN and head stay new.
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.items())
    bottom_up = {k for k in state if k.startswith("backbone.bottom_up.")}
    assert bottom_up == set(weights)


def test_with_fpn_pretrains_the_fpn_too_and_other_settings_are_not_taken_for_the_cached_file(datasets, capsys):
    fpn_file = str(datasets / "fpn.pth")
    assert make_pretrained("--with-fpn", "--output", fpn_file) == 0
    saved = torch.load(fpn_file, map_location="cpu", weights_only=True)
    weights = saved["model"]
    assert saved["pretraining"]["with_fpn"] is True
    # The FPN's convs (lateral, output, P6/P7) besides the ResNet, under the detector's names.
    assert any(k.startswith("backbone.fpn_lateral") for k in weights) and any(".p6." in k for k in weights)
    cfg = get_retina_cfg(SPARSE)
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    DetectionCheckpointer(model).load(fpn_file)
    state = model.state_dict()
    assert set(weights) == {k for k in state if k.startswith("backbone.")} - {
        k for k in state if k.endswith("num_batches_tracked")}
    assert all(torch.equal(state[k], v) for k, v in weights.items())
    # Asked again with other settings, the cached file is not taken for them, and stays.
    mtime = os.path.getmtime(fpn_file)
    with pytest.raises(SystemExit):
        make_pretrained("--output", fpn_file)
    err = capsys.readouterr().err
    assert "made with other settings (with_fpn True there, False asked)" in err and "--force" in err
    with pytest.raises(SystemExit):
        make_pretrained("--with-fpn", "--image-size", "48", "--output", str(datasets / "odd.pth"))
    assert "multiple of 32" in capsys.readouterr().err
    assert os.path.getmtime(fpn_file) == mtime


def test_a_missing_pretrained_backbone_names_the_command_that_makes_it(tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path), PYTHONWARNINGS="ignore")
    # A name that neither this machine nor the repository's pretrained/ folder holds.
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", SPARSE, "OUTPUT_DIR", str(tmp_path / "run"),
         "MODEL.WEIGHTS", "retina_pretrained://not_made_here.pth"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "retina_pretrained://not_made_here.pth" in proc.stderr
    assert "python tools/pretrain_backbone.py --config-file" in proc.stderr
    assert "Traceback" not in proc.stderr and "Starting training" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_sparse_config_with_the_pretrained_backbone_trains_two_iterations(tmp_path, datasets):
    make_pretrained()
    pretrained = torch.load(pretrained_path("retina_pretrained://basic_r18_w32_shapes80_12k.pth"), weights_only=True)["model"]
    data = write_own_dataset(tmp_path / "mine", num_categories=3)
    out = tmp_path / "run"
    run_train_net(
        [
            "--config-file", SPARSE, "--dataset", "mine_train", str(data / "train.json"), str(data / "train"),
            *QUICK, "DATASETS.TRAIN", '("mine_train",)', "DATASETS.TEST", "()", "OUTPUT_DIR", str(out),
        ],
        datasets,
    )
    trained = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    # FREEZE_AT 2: the stem and res2 keep their pretrained weights, res3 on fine-tune.
    assert torch.equal(trained["backbone.bottom_up.stem.conv1.weight"], pretrained["backbone.bottom_up.stem.conv1.weight"])
    assert torch.equal(trained["backbone.bottom_up.res2.0.conv1.weight"], pretrained["backbone.bottom_up.res2.0.conv1.weight"])
    assert not torch.equal(trained["backbone.bottom_up.res4.0.conv1.weight"], pretrained["backbone.bottom_up.res4.0.conv1.weight"])
    # FrozenBN keeps the pretrained statistics.
    key = "backbone.bottom_up.res4.0.conv1.norm.running_mean"
    assert torch.equal(trained[key], pretrained[key])
    # The log names the file made here (before the repository's copy) and its SHA-256, which
    # the ablation runner keeps with a run's result.
    made = pretrained_path("retina_pretrained://basic_r18_w32_shapes80_12k.pth")
    found = PRETRAINED_BACKBONE.search((out / "log.txt").read_text())
    assert found and found.group(1) == file_sha256(made) and f" is {made} " in found.group(0)


def test_the_made_backbone_comes_before_the_repositorys_copy(tmp_path, datasets, monkeypatch):
    url = "retina_pretrained://b.pth"
    monkeypatch.setattr(pretrain, "REPOSITORY_PRETRAINED", str(tmp_path / "repo"))
    assert pretrain.resolve_pretrained(url) is None and not PathManager.isfile(url)
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "b.pth").write_bytes(b"kept")
    assert pretrain.resolve_pretrained(url) == str(tmp_path / "repo" / "b.pth") and PathManager.isfile(url)
    made = pretrained_path(url)
    os.makedirs(os.path.dirname(made), exist_ok=True)
    with open(made, "wb") as f:
        f.write(b"made")
    assert PathManager.get_local_path(url) == made
    assert file_sha256(made) != file_sha256(str(tmp_path / "repo" / "b.pth"))
