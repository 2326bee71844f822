"""
Preemption-safe training. A cluster that preempts a job, or ends it at its time limit, first
sends SIGTERM (or the signal asked for with sbatch's --signal, often SIGUSR1), then kills it.
PreemptionCheckpointer catches both: the iteration in progress finishes, every process agrees
on it (a signal reaches the ranks at slightly different times), rank 0 saves a checkpoint at it
(atomically, as the periodic checkpointer does), the log says what happened and how to resume,
and training stops with Preempted, which train_net.py turns into exit status
PREEMPTED_EXIT_CODE. Under SLURM the job then requeues itself (scontrol requeue), which SLURM
refuses where requeueing is not allowed; the log says which happened. A second signal while
the checkpoint is written changes nothing: the handler only records the first.
"""
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading

from detectron2.engine import HookBase
from detectron2.utils import comm

logger = logging.getLogger(__name__)

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# sysexits' EX_TEMPFAIL: "try again later", not a failure of the run itself.
PREEMPTED_EXIT_CODE = 75


class Preempted(BaseException):
    """Training stopped at a signal after saving a checkpoint. A BaseException, as
    KeyboardInterrupt: detectron2's trainer then runs its hooks' after_train without logging a
    traceback for it."""

    def __init__(self, message, iteration):
        super().__init__(message)
        self.iteration = iteration


def resume_command(argv=None):
    """The command line that continues this run: the same arguments, with --resume."""
    argv = list(sys.argv if argv is None else argv)
    if "--resume" not in argv:
        argv.insert(1, "--resume")
    return " ".join(shlex.quote(a) for a in [sys.executable, *argv])


def requeue_slurm_job(by_submitit_job=False):
    """Requeue this SLURM job (rank 0 only): a message saying what SLURM did, or None outside
    SLURM. In a job that submitit runs (an ablation cell), submitit's job requeues, not
    train_net.py: `by_submitit_job` is that job asking."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID") and f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"
    job = job or os.environ.get("SLURM_JOB_ID")
    if not job or not comm.is_main_process():
        return None
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and not by_submitit_job:
        return f"SLURM job {job} runs an ablation cell: its runner's job requeues it"
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"SLURM job {job} could not be requeued ({e}): resubmit it with --resume"
    if done.returncode == 0:
        return f"SLURM job {job} requeued: it resumes from this checkpoint when it starts again"
    return f"SLURM job {job} was not requeued ({done.stderr.strip() or done.returncode}): resubmit it with --resume"


class PreemptionCheckpointer(HookBase):
    """Save a checkpoint and stop at SIGTERM or SIGUSR1 (see the module's docstring)."""

    def __init__(self, checkpointer, signals=PREEMPTION_SIGNALS):
        self.checkpointer = checkpointer
        self.signals = signals
        self.received = None
        self._previous = {}

    def _on_signal(self, signum, frame):
        if self.received is None:
            self.received = signal.Signals(signum).name

    def before_train(self):
        # Signal handlers can only be set from the main thread (the tests train in others).
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._on_signal)

    def after_train(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _agreed(self):
        """The signal any process received, on every process (None if none did)."""
        if comm.get_world_size() == 1:
            return self.received
        return next((r for r in comm.all_gather(self.received) if r), None)

    def after_step(self):
        received = self._agreed()
        if received is None:
            return
        iteration = self.trainer.iter
        name = f"model_{iteration:07d}"
        self.checkpointer.save(name, iteration=iteration)  # writes on rank 0 only
        comm.synchronize()
        path = os.path.join(self.checkpointer.save_dir, f"{name}.pth")
        requeued = requeue_slurm_job()
        message = (
            f"Received {received}: stopped after iteration {iteration} and saved {path}. "
            f"Continue with: {resume_command()}"
            + (f". {requeued}." if requeued else ".")
        )
        logger.warning(message)
        raise Preempted(message, iteration)
