"""
Which machine computes a run. Float arithmetic differs between CPUs (the vector instructions
torch's kernels use on each), so one config and seed trained on two machines are two different
runs, which part after a few dozen iterations as two seeds do. train_net.py logs this line at
every start; the ablation runner keeps the machines a run was trained on with its result.
"""
import platform
import re
from typing import List

import torch

MACHINE_PREFIX = "Machine: "
_MACHINE_LINE = re.compile(re.escape(MACHINE_PREFIX) + r"(.+?)\s*$", re.M)


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what `platform` knows of it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe_machine(device="cpu") -> str:
    """'<CPU model> (<torch's CPU capability>), torch <version>', with the GPU's name when
    `device` is a CUDA one (then the GPU does the arithmetic that matters)."""
    text = f"{cpu_model()} ({torch.backends.cpu.get_cpu_capability()}), torch {torch.__version__}"
    if str(device).startswith("cuda") and torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name()}"
    return text


def machines_in_log(text: str) -> List[str]:
    """The distinct machines a log names (describe_machine's lines), in the order they first
    appear: detectron2 appends to OUTPUT_DIR/log.txt, so a resumed run's log names each
    machine that trained a part of it."""
    return list(dict.fromkeys(_MACHINE_LINE.findall(text)))
