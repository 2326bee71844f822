"""The second round of faults users hit with their own data and machines, each run for real:
annotations that are not finite numbers, decompression bombs, nothing to train on, --resume
with another config, two runs in one OUTPUT_DIR, missing builtin data, a full disk."""
import errno
import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from retina_plugin.checkpoint import CheckpointError, SafeDetectionCheckpointer
from retina_plugin.data import CheckedDatasetMapper, DatasetError, register_coco_dataset
from retina_plugin.output_lock import OutputDirInUseError, lock_output_dir, release_output_dir

from helpers import REPO, tiny_cfg
from test_train_net import QUICK, write_own_dataset


def run(args, datasets, timeout=300):
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets), PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "train_net.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "bbox, area, shown",
    [([1, 2, float("nan"), 4], 8, "bbox [1, 2, NaN, 4]"), ([1, "2", 3, 4], 12, 'bbox [1, "2", 3, 4]'),
     ([1, 2, 3, None], 12, "bbox [1, 2, 3, null]"), ([1, 2, 3, 4], float("inf"), "area Infinity")],
)
def test_annotations_that_are_not_finite_numbers_are_named(tmp_path, bbox, area, shown):
    (tmp_path / "images").mkdir()
    coco = {"images": [{"id": 1, "file_name": "1.png", "height": 32, "width": 32}],
            "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": bbox, "area": area, "iscrowd": 0}],
            "categories": [{"id": 1, "name": "a"}]}
    (tmp_path / "a.json").write_text(json.dumps(coco))
    with pytest.raises(DatasetError) as error:
        register_coco_dataset(f"nonfinite_{abs(hash(shown))}", str(tmp_path / "a.json"), str(tmp_path / "images"))
    assert f"annotation 7 (image 1) has {shown}" in str(error.value) and "fix or remove" in str(error.value)


def test_a_decompression_bomb_is_skipped_in_training_and_named_in_evaluation(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(path)
    # PIL refuses images of more than 2 x MAX_IMAGE_PIXELS: lower the bar instead of writing GBs.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    record = {"file_name": str(path), "height": 64, "width": 64, "image_id": 1,
              "annotations": [{"bbox": [1, 1, 20, 20], "bbox_mode": 1, "category_id": 0}]}
    cfg = tiny_cfg()
    assert CheckedDatasetMapper(cfg, is_train=True)(dict(record)) is None
    with pytest.raises(DatasetError, match=r"bomb\.png cannot be read \(Image size .* exceeds limit"):
        CheckedDatasetMapper(cfg, is_train=False)(dict(record))


def test_an_output_dir_holds_one_run_and_a_killed_run_leaves_no_lock(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[2]);"
         "from retina_plugin.output_lock import lock_output_dir; lock_output_dir(sys.argv[1]);"
         "print('locked', flush=True); time.sleep(120)", str(tmp_path), REPO],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputDirInUseError, match=rf"in use by another run \(pid {holder.pid}, started"):
            lock_output_dir(str(tmp_path))
    finally:
        holder.kill()  # kill -9: the system releases the lock
        holder.wait()
    lock_output_dir(str(tmp_path))
    release_output_dir(str(tmp_path))


def fill(folder):
    """Fill the filesystem of `folder` until a write fails for want of space."""
    with open(os.path.join(folder, "filler"), "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs where the machine allows mounting one (root), else None."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True)
    yield mount if done.returncode == 0 else None
    if done.returncode == 0:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_names_the_file_and_the_intact_checkpoint(small_disk, tmp_path, monkeypatch):
    folder = small_disk or tmp_path
    model = torch.nn.Linear(64, 64)
    checkpointer = SafeDetectionCheckpointer(model, str(folder))
    checkpointer.save("model_0000009")
    before = (folder / "model_0000009.pth").read_bytes()
    if small_disk is not None:
        fill(folder)  # a real full disk
    else:  # no mount allowed here: the same failure, raised where the write happens
        def no_space(*args, **kwargs):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(CheckpointError) as error:
        checkpointer.save("model_0000019")
    message = str(error.value)
    assert f"Could not write checkpoint {folder / 'model_0000019.pth'}: No space left on device" in message
    assert f"The previous checkpoint is intact: {folder / 'model_0000009.pth'}" in message and "--resume" in message
    assert (folder / "model_0000009.pth").read_bytes() == before
    assert (folder / "last_checkpoint").read_text() == "model_0000009.pth"
    assert not (folder / "model_0000019.pth").exists() and not list(folder.glob("*.partial"))


@pytest.mark.slow
def test_nothing_to_train_on_says_why(tmp_path):
    data = write_own_dataset(tmp_path / "data", num_categories=2)
    coco = json.loads((data / "train.json").read_text())
    for annotation in coco["annotations"]:
        annotation["image_id"] += 1000  # annotations of images that are not in the json
    (data / "train.json").write_text(json.dumps(coco))
    code, log = run(["--config-file", os.path.join(REPO, "configs", "quickstart.yaml"),
                     "--dataset", "orphans_train", str(data / "train.json"), str(data / "train"), *QUICK,
                     "DATASETS.TRAIN", '("orphans_train",)', "DATASETS.TEST", "()",
                     "OUTPUT_DIR", str(tmp_path / "run")], tmp_path)
    assert code == 2, log[-3000:]
    assert "Nothing to train on in DATASETS.TRAIN: 'orphans_train': 3 images; 3 without annotations" in log
    assert "refer to its images' ids" in log and "Traceback" not in log


@pytest.mark.slow
def test_resume_with_another_config_is_refused_naming_what_differs(tmp_path):
    data = write_own_dataset(tmp_path / "data", num_categories=2)
    out = tmp_path / "run"
    args = ["--config-file", os.path.join(REPO, "configs", "quickstart.yaml"),
            "--dataset", "resume_train", str(data / "train.json"), str(data / "train"), *QUICK,
            "DATASETS.TRAIN", '("resume_train",)', "DATASETS.TEST", "()", "OUTPUT_DIR", str(out)]
    code, log = run(args, tmp_path)
    assert code == 0, log[-3000:]
    files = lambda: {p.name: p.stat().st_mtime for p in out.iterdir() if p.name != ".lock"}  # noqa: E731
    before = files()
    other_loss = ["MODEL.RETINANET.CLS_LOSS_TYPE", "softmax_focal"]
    code, log = run([args[0], args[1], "--resume", *args[2:], *other_loss], tmp_path)
    assert code == 2, log[-3000:]
    assert f"--resume would continue {out / 'model_final.pth'}: 2 weights of other shapes (e.g. head.cls_score" in log
    assert "MODEL.RETINANET.CLS_LOSS_TYPE: 'focal' then, 'softmax_focal' now" in log and "--start-over" in log
    assert files() == before  # nothing written, config.yaml included
    code, log = run([args[0], args[1], "--resume", "--start-over", *args[2:], *other_loss], tmp_path)
    assert code == 0 and "Starting training from iteration 0" in log, log[-3000:]


@pytest.mark.slow
def test_builtin_data_that_is_not_here_stops_at_start(tmp_path):
    code, log = run(["--config-file", os.path.join(REPO, "configs", "retina_r101.yaml"), "OUTPUT_DIR", str(tmp_path / "run")],
                    tmp_path / "empty")
    assert code == 2, log[-3000:]
    assert "'coco_2017_train' expects " in log and "instances_train2017.json" in log
    assert f"DETECTRON2_DATASETS={str(tmp_path / 'empty')!r}" in log and "make quickstart" in log
    assert "Traceback" not in log and "FocalRetinaNet(" not in log  # before the model is built


# The faults of issue 21, tried as a new user would.


def test_a_misspelt_key_names_where_it_came_from_and_the_closest_keys(tmp_path):
    from retina_plugin import ConfigValueError
    from retina_plugin.config import get_retina_cfg

    quickstart = os.path.join(REPO, "configs", "quickstart.yaml")
    with pytest.raises(ConfigValueError) as error:
        get_retina_cfg(quickstart, ["MODEL.RETINANET.FOCAL_LOSS_GAMA", "1.0"])
    assert str(error.value).startswith(
        "MODEL.RETINANET.FOCAL_LOSS_GAMA is not a config key (given on the command line). "
        "Did you mean MODEL.RETINANET.FOCAL_LOSS_GAMMA"
    )
    # In a yaml whose _BASE_ is fine: the file that sets it is named.
    bad = tmp_path / "bad.yaml"
    bad.write_text(f'_BASE_: "{quickstart}"\nMODEL:\n  RETINANETT:\n    NUM_CLASSES: 3\n')
    child = tmp_path / "child.yaml"
    child.write_text(f'_BASE_: "{bad}"\nSOLVER:\n  BASE_LR: 0.01\n')
    with pytest.raises(ConfigValueError) as error:
        get_retina_cfg(str(child))
    assert f"MODEL.RETINANETT.NUM_CLASSES is not a config key (set in {bad})" in str(error.value)
    assert "Did you mean MODEL.RETINANET.NUM_CLASSES" in str(error.value)
    # Through train_net.py: the message alone, no traceback.
    code, log = run(["--config-file", quickstart, "MODEL.RETINANET.FOCAL_LOSS_GAMA", "1.0",
                     "OUTPUT_DIR", str(tmp_path / "run")], tmp_path)
    assert code == 2 and "Did you mean MODEL.RETINANET.FOCAL_LOSS_GAMMA" in log and "Traceback" not in log


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only tmpfs where the machine allows mounting one (root), else a path under a file
    (which no one can create either)."""
    mount = tmp_path / "ro"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode == 0:
        yield mount / "run", "Read-only file system"
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
    else:
        (tmp_path / "a_file").write_text("")
        yield tmp_path / "a_file" / "run", "Not a directory"


def test_an_output_dir_that_cannot_be_written_is_said_at_start(tmp_path, read_only_dir):
    out, reason = read_only_dir
    code, log = run(["--config-file", os.path.join(REPO, "configs", "quickstart.yaml"), "OUTPUT_DIR", str(out)], tmp_path)
    assert code == 2, log[-3000:]
    assert f"OUTPUT_DIR {out} cannot be written ({reason})" in log and "Choose a writable OUTPUT_DIR" in log
    assert "Traceback" not in log and "Starting training" not in log and "Generating" not in log


def test_resume_whose_last_checkpoint_is_gone_names_it_and_the_choices(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    checkpointer = SafeDetectionCheckpointer(torch.nn.Linear(2, 2), str(out))
    checkpointer.save("model_0000099")
    os.remove(out / "model_0000099.pth")
    with pytest.raises(CheckpointError) as error:
        checkpointer.resume_or_load("weights.pth", resume=True)
    message = str(error.value)
    assert f"--resume: {out / 'last_checkpoint'} names {out / 'model_0000099.pth'}, which does not exist" in message
    assert "Restore that file" in message and "--start-over" in message and "MODEL.WEIGHTS" not in message.split("--start-over")[0]


def test_slurm_launch_takes_the_machines_from_srun_and_names_what_is_inconsistent():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_net_for_slurm", os.path.join(REPO, "train_net.py"))
    train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_net)
    from retina_plugin import ConfigValueError

    args = train_net.argument_parser().parse_args(["--slurm", "--dist-url", "tcp://node1:1234"])
    with pytest.raises(ConfigValueError, match="SLURM_PROCID, SLURM_NTASKS, SLURM_JOB_NODELIST, SLURM_JOB_ID not set"):
        train_net.apply_slurm_environment(args, environ={})
    srun = {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_JOB_ID": "7"}
    train_net.apply_slurm_environment(args, environ=srun)
    assert (args.num_machines, args.machine_rank, args.dist_url) == (2, 1, "tcp://node1:1234")
    wrong = train_net.argument_parser().parse_args(["--slurm", "--num-machines", "3", "--machine-rank", "0"])
    with pytest.raises(ConfigValueError) as error:
        train_net.apply_slurm_environment(wrong, environ=srun)
    assert "--num-machines 3, but SLURM runs 2 tasks" in str(error.value) and "--machine-rank 0" not in str(error.value)
