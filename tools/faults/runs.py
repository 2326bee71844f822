"""Faults of running: losses that blow up, kills, interrupted writes, full disks, shared folders."""
import os
import signal
import subprocess
import sys
import time

from .common import REPO, TINY, dataset_args, last_line_with, train_net


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


def fault_two_cpu_processes(work, data):
    code, log = train_net(work, "--num-gpus", "2", *dataset_args(data), *TINY, "SOLVER.MAX_ITER", "3",
                          "OUTPUT_DIR", os.path.join(work, "out"))
    ok = code == 0 and "copypaste: AP" in log
    return ok, "2 processes over gloo trained and evaluated" if ok else last_line_with(log, "Error"), False


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


def fault_read_only_output_dir(work, data):
    folder = os.path.join(work, "ro")
    os.makedirs(folder, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", folder], capture_output=True).returncode == 0
    if not mounted:  # a path under a file cannot be created either, by anyone
        open(os.path.join(work, "a_file"), "w").close()
        folder = os.path.join(work, "a_file")
    try:
        code, log = train_net(work, *dataset_args(data), *TINY, "OUTPUT_DIR", os.path.join(folder, "out"))
    finally:
        if mounted:
            subprocess.run(["umount", "-l", folder], capture_output=True)
    handled = code != 0 and "cannot be written" in log and "Starting training" not in log and "Traceback" not in log
    return handled, last_line_with(log, "cannot be written"), False


def fault_resume_missing_last_checkpoint(work, data):
    out = os.path.join(work, "out")
    args = [*dataset_args(data), *TINY, "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()", "OUTPUT_DIR", out]
    train_net(work, *args)
    os.rename(os.path.join(out, "model_final.pth"), os.path.join(out, "moved.pth"))
    code, log = train_net(work, "--resume", *args)
    os.rename(os.path.join(out, "moved.pth"), os.path.join(out, "model_final.pth"))
    handled = code != 0 and "last_checkpoint names" in log and "--start-over" in log and "Traceback" not in log
    return handled, last_line_with(log, "last_checkpoint names"), False


def fault_preemption(work, data):
    out = os.path.join(work, "out")
    args = [*dataset_args(data), *TINY, "SOLVER.MAX_ITER", "100000", "DATASETS.TEST", "()", "OUTPUT_DIR", out]
    command = [sys.executable, os.path.join(REPO, "train_net.py"),
               "--config-file", os.path.join(REPO, "configs", "quickstart.yaml"), *args]
    proc = subprocess.Popen(command, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not os.path.exists(os.path.join(out, "metrics.json")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # a second signal while it saves
    log, _ = proc.communicate(timeout=300)
    with open(os.path.join(out, "last_checkpoint")) as f:
        saved = f.read().strip()
    import torch

    iteration = torch.load(os.path.join(out, saved), map_location="cpu", weights_only=False)["iteration"]
    code, resumed = train_net(work, "--resume", *args[:-4], "SOLVER.MAX_ITER", str(iteration + 2), "OUTPUT_DIR", out)
    handled = (proc.returncode == 75 and f"stopped after iteration {iteration}" in log
               and f"Starting training from iteration {iteration + 1}" in resumed and code == 0)
    what = f"exit {proc.returncode}; " + last_line_with(log, "Received SIGTERM")[:90] + f"...; --resume continued from iteration {iteration + 1}"
    return handled, what, not handled
