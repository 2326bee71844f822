import os
import pickle
import subprocess
import sys

import pytest
import torch

from detectron2.modeling import build_model

from retina_plugin.checkpoint import CheckpointError, SafeDetectionCheckpointer

from helpers import REPO, tiny_cfg


class RunsCode:
    """Unpickling this runs a shell command: what a crafted checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model(tiny_cfg())


def test_a_pkl_that_would_run_code_is_refused(model, tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": RunsCode(marker)}, "__author__": "x"}))
    with pytest.raises(CheckpointError, match=r"evil\.pkl was refused: it names posix\.system"):
        SafeDetectionCheckpointer(model).load(str(path))
    assert not marker.exists()


def test_a_pth_that_would_run_code_is_refused(model, tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"model": model.state_dict(), "payload": RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pth was refused: it would run code"):
        SafeDetectionCheckpointer(model).load(str(path))
    assert not marker.exists()


def test_genuine_detectron2_pkl_and_pth_checkpoints_load(model, tmp_path):
    weights = {k: v.numpy() for k, v in model.state_dict().items()}
    (tmp_path / "zoo.pkl").write_bytes(pickle.dumps({"model": weights, "__author__": "test"}))
    SafeDetectionCheckpointer(model, save_dir=str(tmp_path)).save("ours")

    for name in ("zoo.pkl", "ours.pth"):
        torch.manual_seed(1)
        other = build_model(tiny_cfg())
        checkpointer = SafeDetectionCheckpointer(other)
        checkpointer.load(str(tmp_path / name))
        checkpointer.require_complete_load(name)
        for key, value in model.state_dict().items():
            assert torch.equal(other.state_dict()[key], value), (name, key)


@pytest.mark.parametrize("suffix", [".pth", ".pkl"])
def test_truncated_and_missing_checkpoints_have_clear_errors(model, tmp_path, suffix):
    whole = tmp_path / f"whole{suffix}"
    if suffix == ".pkl":
        whole.write_bytes(pickle.dumps({"model": {k: v.numpy() for k, v in model.state_dict().items()}, "__author__": "t"}))
    else:
        torch.save({"model": model.state_dict()}, whole)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=rf"cut\{suffix} cannot be read .*truncated"):
        SafeDetectionCheckpointer(model).load(str(cut))
    with pytest.raises(CheckpointError, match=r"nowhere.* does not exist: check MODEL.WEIGHTS"):
        SafeDetectionCheckpointer(model).load(str(tmp_path / f"nowhere{suffix}"))


def test_a_checkpoint_of_another_model_does_not_fit(model, tmp_path):
    SafeDetectionCheckpointer(model, save_dir=str(tmp_path)).save("three_classes")
    five = build_model(tiny_cfg(num_classes=5))
    checkpointer = SafeDetectionCheckpointer(five)
    checkpointer.load(str(tmp_path / "three_classes.pth"))
    with pytest.raises(CheckpointError, match=r"does not fit this model: .*head\.cls_score\.weight"):
        checkpointer.require_complete_load("three_classes.pth")


@pytest.mark.slow
def test_eval_only_with_a_missing_checkpoint_fails_clearly(tmp_path):
    proc = subprocess.run(
        [
            sys.executable, os.path.join(REPO, "train_net.py"),
            "--config-file", os.path.join(REPO, "configs", "quickstart.yaml"), "--eval-only",
            "MODEL.WEIGHTS", str(tmp_path / "model_final.pth"), "OUTPUT_DIR", str(tmp_path),
        ],
        cwd=REPO, env=dict(os.environ, DETECTRON2_DATASETS=str(tmp_path), PYTHONWARNINGS="ignore"),
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    assert "model_final.pth' does not exist: check MODEL.WEIGHTS" in proc.stderr


def test_an_interrupted_save_leaves_the_previous_checkpoint(model, tmp_path, monkeypatch):
    checkpointer = SafeDetectionCheckpointer(model, save_dir=str(tmp_path))
    checkpointer.save("model_final", iteration=9)
    good = (tmp_path / "model_final.pth").read_bytes()

    real_save = torch.save

    def killed_halfway(obj, f):
        real_save(obj, f)
        f.truncate(f.tell() // 2)
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_final", iteration=10)
    monkeypatch.undo()

    assert (tmp_path / "model_final.pth").read_bytes() == good
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_final.pth"]
    assert SafeDetectionCheckpointer(model).load(str(tmp_path / "model_final.pth"))["iteration"] == 9
