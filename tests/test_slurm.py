"""The ablation runner and train_net.py on a real single-node SLURM (tests/slurm_cluster.py):
a grid through SLURM to its report, a run preempted mid-training that resumes and ends as an
uninterrupted run, a run requeued at its time limit, and train_net.py over two SLURM tasks."""
import contextlib
import io
import json
import os
import subprocess
import sys
import threading
import time
import unittest.mock

import pytest
import torch

from retina_plugin.ablations import GRIDS, Cell, Grid, run_cell

from helpers import REPO
from slurm_cluster import LocalSlurm, SlurmUnavailable
from test_train_net import load_tool, write_own_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except SlurmUnavailable as e:
        pytest.skip(f"no SLURM here: {e}")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = cluster.conf
    yield cluster
    cluster.stop()
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_own_dataset(tmp_path_factory.mktemp("slurm_data"), num_categories=3)


def train_args(data):
    """train_net.py's arguments before the KEY VALUE pairs: the config and the tiny data set."""
    return ["--config-file", os.path.join(REPO, "configs", "quickstart.yaml"),
            "--dataset", "sl_train", str(data / "train.json"), str(data / "train"),
            "--dataset", "sl_val", str(data / "val.json"), str(data / "val")]


def tiny_opts(*more):
    return [*more, "DATASETS.TRAIN", '("sl_train",)', "DATASETS.TEST", '("sl_val",)', "SEED", "0",
            "SOLVER.IMS_PER_BATCH", "2", "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
            "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64", "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0",
            "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()"]


def grid_args(data, out, *more, slurm_flags=("--time", "10")):
    return [*train_args(data), "--output-dir", str(out), "--executor", "slurm", *slurm_flags, *tiny_opts(*more)]


def run_tool(args):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = load_tool("run_ablations").main(args)
    return code, out.getvalue()


TINY = Grid("tiny SLURM grid", (
    Cell("CE", (("MODEL.RETINANET.FOCAL_LOSS_GAMMA", 0.0),)),
    Cell("FL", (("MODEL.RETINANET.FOCAL_LOSS_GAMMA", 2.0),)),
))


def test_a_grid_runs_through_slurm_to_its_report_and_a_rerun_submits_nothing(slurm, data, tmp_path):
    out = tmp_path / "grid"
    args = ["--grid", "slurm_tiny", *grid_args(data, out, "SOLVER.MAX_ITER", "3")]
    with unittest.mock.patch.dict(GRIDS, {"slurm_tiny": TINY}):
        code, log = run_tool(args)
        assert code == 0, log
        for cell in TINY.cells:
            directory = out / "cells" / cell.key
            result = json.loads((directory / "result.json").read_text())
            assert result["status"] == "ok" and 0 <= result["metrics"]["AP"] <= 100
            job = json.loads((directory / "slurm_job.json").read_text())
            assert f"{cell.label}: submitted as SLURM job {job['job_id']}" in log
        assert "| CE |" in (out / "results.md").read_text() and "| FL |" in (out / "results.md").read_text()
        code, again = run_tool(args)
    assert code == 0 and "submitted as SLURM job" not in again and "| FL |" in (out / "results.md").read_text()


def wait_for(condition, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def iteration_of(directory):
    from retina_plugin.ablations.run_dir import last_iteration

    return last_iteration(str(directory)) or 0


def test_a_preempted_run_resumes_and_ends_as_an_uninterrupted_run(slurm, data, tmp_path):
    cell = Cell("FL", (("MODEL.RETINANET.FOCAL_LOSS_GAMMA", 2.0),))
    out = tmp_path / "preempted"
    args = ["--grid", "slurm_one", *grid_args(data, out, "SOLVER.MAX_ITER", "60", "SOLVER.CHECKPOINT_PERIOD", "1000")]
    with unittest.mock.patch.dict(GRIDS, {"slurm_one": Grid("one", (cell,))}):
        outcome = {}
        submitter = threading.Thread(target=lambda: outcome.update(zip(("code", "log"), run_tool(args))))
        submitter.start()
        directory = out / "cells" / cell.key
        wait_for(lambda: iteration_of(directory) >= 20, 300, "20 iterations")
        job = json.loads((directory / "slurm_job.json").read_text())["job_id"]
        subprocess.run(["scancel", "--signal=TERM", job], check=True, env=slurm.env)
        submitter.join(timeout=600)
    assert outcome["code"] == 0, outcome.get("log")
    log = (directory / "log.txt").read_text()
    assert "Received SIGTERM: stopped after iteration" in log
    stopped = int(log.split("Received SIGTERM: stopped after iteration ")[1].split()[0])
    assert f"Starting training from iteration {stopped + 1}" in log

    # The same run, uninterrupted and on this machine, ends with the same weights and AP.
    local = tmp_path / "local"
    straight = run_cell(cell, str(local), train_args(data), tiny_opts("SOLVER.MAX_ITER", "60", "SOLVER.CHECKPOINT_PERIOD", "1000"), threads=1)
    assert straight.status == "ok"
    resumed = json.loads((directory / "result.json").read_text())
    assert resumed["metrics"]["AP"] == pytest.approx(straight.metrics["AP"])
    a = torch.load(directory / "model_final.pth", weights_only=False)["model"]
    b = torch.load(local / "cells" / cell.key / "model_final.pth", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in b), "the resumed run's weights differ"


def test_a_run_at_its_time_limit_is_requeued_and_resumes(slurm, data, tmp_path):
    cell = Cell("CE", (("MODEL.RETINANET.FOCAL_LOSS_GAMMA", 0.0),))
    out = tmp_path / "timeout"
    # A one-minute limit, the signal to save 20 s before it: each attempt trains about 40 s.
    args = ["--grid", "slurm_long", *grid_args(data, out, "SOLVER.MAX_ITER", "100000", "SOLVER.CHECKPOINT_PERIOD", "100000",
                                                slurm_flags=("--time", "1", "--signal-delay", "20"))]
    directory = out / "cells" / cell.key
    with unittest.mock.patch.dict(GRIDS, {"slurm_long": Grid("long", (cell,))}):
        submitter = threading.Thread(target=run_tool, args=(args,), daemon=True)
        submitter.start()
        try:
            def resumed():
                log = (directory / "log.txt").read_text() if (directory / "log.txt").exists() else ""
                return "Received SIGTERM" in log and log.count("Starting training from iteration") >= 2

            wait_for(resumed, 420, "a requeued run that resumed")
        finally:
            record = directory / "slurm_job.json"
            if record.exists():
                subprocess.run(["scancel", json.loads(record.read_text())["job_id"]], env=slurm.env)
            submitter.join(timeout=180)  # it sees the job end, reports it failed, and returns
    log = (directory / "log.txt").read_text()
    stopped = int(log.split("Received SIGTERM: stopped after iteration ")[1].split()[0])
    assert f"Starting training from iteration {stopped + 1}" in log


def test_train_net_trains_over_two_srun_tasks(slurm, data, tmp_path):
    out = tmp_path / "two_tasks"
    command = ["srun", "--ntasks", "2", "--cpus-per-task", "1", sys.executable, os.path.join(REPO, "train_net.py"),
               "--slurm", *train_args(data), *tiny_opts("SOLVER.MAX_ITER", "3"), "OUTPUT_DIR", str(out)]
    done = subprocess.run(command, cwd=REPO, env=dict(slurm.env, PYTHONWARNINGS="ignore"), capture_output=True,
                          text=True, timeout=600)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    logs = "".join(path.read_text() for path in out.glob("log.txt*"))  # log.txt, log.txt.rank1
    assert "Rank of current process: 0. World size: 2" in logs and "Rank of current process: 1. World size: 2" in logs
    assert "machine_rank=1, dist_url='tcp://" in logs
    assert (out / "model_final.pth").is_file()


def test_a_rerun_after_the_submitting_shell_died_follows_the_jobs_instead_of_submitting(slurm, data, tmp_path):
    out = tmp_path / "followed"
    args = ["--grid", "init", *grid_args(data, out, "SOLVER.MAX_ITER", "40")]
    first = subprocess.Popen([sys.executable, os.path.join(REPO, "tools", "run_ablations.py"), *args], cwd=REPO,
                             env=dict(slurm.env, PYTHONWARNINGS="ignore"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cells = [cell for cell in GRIDS["init"].cells]
    records = [out / "cells" / cell.key / "slurm_job.json" for cell in cells]
    wait_for(lambda: all(r.exists() for r in records), 300, "both jobs submitted")
    first.kill()  # the submitting shell dies; its jobs go on
    first.wait()
    jobs = [json.loads(r.read_text())["job_id"] for r in records]
    code, log = run_tool(args)
    assert code == 0, log
    assert "submitted as SLURM job" not in log
    for cell, job in zip(cells, jobs):
        assert f"{cell.label}: following SLURM job {job}" in log
        assert (out / "cells" / cell.key / "result.json").exists()
    assert len(set(jobs)) == 2 and all(json.loads(r.read_text())["job_id"] in jobs for r in records)
