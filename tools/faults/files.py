"""Faults of the files a user gives: configs and checkpoints."""
import os
import pickle
import subprocess
import sys

from .common import REPO, TINY, dataset_args, eval_only, last_line_with, train_net


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


def fault_misspelt_key(work, data):
    config = os.path.join(work, "misspelt.yaml")
    with open(config, "w") as f:
        f.write(f'_BASE_: "{REPO}/configs/quickstart.yaml"\nMODEL:\n  RETINANET:\n    FOCAL_LOSS_GAMA: 1.0\n')
    code, log = train_net(work, "MODEL.RETINANET.FOCAL_LOSS_GAMA", "1.0", "OUTPUT_DIR", os.path.join(work, "out"))
    proc = subprocess.run([sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", config],
                          cwd=work, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    in_file = proc.stdout + proc.stderr
    handled = (code != 0 and "given on the command line" in log and f"set in {config}" in in_file
               and "Did you mean MODEL.RETINANET.FOCAL_LOSS_GAMMA" in log + in_file and "Traceback" not in log + in_file)
    return handled, last_line_with(log, "is not a config key"), False
