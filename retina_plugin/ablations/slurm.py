"""
The runs of grids as SLURM jobs, through submitit: one job per run (cell and seed), which runs
train_net.py in the run's usual directory (OUTPUT_DIR/cells/<run>/), so finished runs, reports,
--reuse-from and --seeds are the local runner's.

Preemption and time limits: SLURM signals the job before it stops it. At submitit's signal
(USR2, `signal_delay_s` before the time limit, or when preempted) the job (CellJob.checkpoint)
sends train_net.py SIGTERM, waits while it saves a checkpoint at the current iteration, and
submitit requeues the job. At a SIGTERM to the whole job (`scancel --signal=TERM`, `scontrol
requeue`), train_net.py saves and exits with PREEMPTED_EXIT_CODE and the job requeues itself.
Either way the requeued job resumes the run from that checkpoint (train_net.py --resume).

Each submitted job is recorded in the run's directory (slurm_job.json), so a rerun of the same
command, after the submitting shell died, follows the jobs still queued or running instead of
submitting them again, and collects what finished. Job states come from squeue, which needs no
accounting database.
"""
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from .cell import Cell
from .result import Result, outcome
from .run_dir import cell_dir, finished_result, last_iteration
from .runner import run_cell

ACTIVE_STATES = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                 "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "PREEMPTED")
JOB_RECORD = "slurm_job.json"


@dataclass
class SlurmOptions:
    """What every job asks SLURM for (the flags of tools/run_ablations.py --executor slurm)."""

    partition: Optional[str] = None
    time_min: int = 60
    cpus_per_task: int = 1
    gpus_per_task: int = 0
    mem_gb: Optional[float] = None
    signal_delay_s: int = 90  # the signal to checkpoint comes this long before the time limit
    extra: Dict[str, str] = field(default_factory=dict)  # more sbatch options, without "--"

    def executor_parameters(self) -> dict:
        parameters = {
            "timeout_min": self.time_min,
            "cpus_per_task": self.cpus_per_task,
            "slurm_signal_delay_s": self.signal_delay_s,
            "tasks_per_node": 1,
            "nodes": 1,
        }
        if self.partition:
            parameters["slurm_partition"] = self.partition
        if self.gpus_per_task:
            parameters["slurm_gpus_per_task"] = self.gpus_per_task
        if self.mem_gb:
            parameters["mem_gb"] = self.mem_gb
        if self.extra:
            parameters["slurm_additional_parameters"] = dict(self.extra)
        return parameters


class CellJob:
    """One run as a submitit job: __call__ trains it; checkpoint() saves it and asks for a requeue."""

    def __init__(self, cell: Cell, out_dir, base_args, extra_opts, threads, save_timeout=60):
        self.cell, self.out_dir, self.base_args, self.extra_opts, self.threads = cell, out_dir, base_args, extra_opts, threads
        self.save_timeout = save_timeout  # how long train_net.py may take to save before SLURM stops the job
        self._child = None

    def _launch(self, command, log, env):
        # train_net.py ignores submitit's USR2 (SLURM sends it to every process of the job):
        # this job forwards it as the SIGTERM train_net.py saves at.
        self._child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                       preexec_fn=lambda: signal.signal(signal.SIGUSR2, signal.SIG_IGN))
        # Polled, not wait()ed: a blocking wait holds the Popen's lock, and checkpoint(), which
        # runs in a signal handler on top of it, could then not see the child end.
        while self._child.poll() is None:
            time.sleep(0.5)
        return self._child.returncode

    def __call__(self):
        from ..preemption import PREEMPTED_EXIT_CODE, requeue_slurm_job

        result = run_cell(self.cell, self.out_dir, self.base_args, self.extra_opts, self.threads, launch=self._launch)
        if result.status == "failed" and self._child is not None and self._child.returncode == PREEMPTED_EXIT_CODE:
            # SIGTERM to the whole job: train_net.py saved. A job still running was signalled
            # (scancel --signal=TERM, a preemption): requeue it, and wait for SLURM to stop this
            # one. A job cancelled (scancel) or requeued already (scontrol requeue) is left so.
            job = os.environ.get("SLURM_JOB_ID", "")
            state = slurm_states([job]).get(job)
            if state == "RUNNING":
                print(requeue_slurm_job(by_submitit_job=True), flush=True)
                time.sleep(3600)
            print(f"SLURM job {job} is {state}: not requeued by itself", flush=True)
        return result.__dict__

    def checkpoint(self, *args, **kwargs):
        import submitit

        child = self._child
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)  # train_net.py saves at the current iteration and exits
            deadline = time.time() + self.save_timeout
            while child.poll() is None and time.time() < deadline:
                time.sleep(0.2)
        again = CellJob(self.cell, self.out_dir, self.base_args, self.extra_opts, self.threads, self.save_timeout)
        return submitit.helpers.DelayedSubmission(again)

    def __getstate__(self):  # the running child stays with this process
        return {k: v for k, v in self.__dict__.items() if k != "_child"}

    def __setstate__(self, state):
        self.__dict__.update(state, _child=None)


def slurm_states(job_ids: List[str]) -> Dict[str, str]:
    """{job id: state} of the jobs squeue still knows (finished jobs drop out after MinJobAge)."""
    if not job_ids:
        return {}
    done = subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", ",".join(job_ids)], capture_output=True, text=True)
    states = {}
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


def read_job_record(cell: Cell, out_dir) -> Optional[dict]:
    path = os.path.join(cell_dir(cell, out_dir), JOB_RECORD)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_job_record(cell: Cell, out_dir, record: dict):
    directory = cell_dir(cell, out_dir)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, JOB_RECORD), "w") as f:
        json.dump(record, f, indent=2)


def run_on_slurm(runs: Dict[str, Cell], out_dir, base_args, extra_opts, options: SlurmOptions,
                 log: Callable[[str], None] = print, poll_every=10.0, progress_every=60.0, max_iter=None,
                 states: Callable[[List[str]], Dict[str, str]] = slurm_states) -> Dict[str, Result]:
    """Submit (or follow) a job for every unfinished run, wait for all, return {run key: Result}."""
    import submitit

    executor = submitit.AutoExecutor(folder=os.path.join(out_dir, "slurm", "%j"), cluster="slurm")
    executor.update_parameters(name="retina_ablation", **options.executor_parameters())
    results, jobs = {}, {}
    for key, cell in runs.items():
        done = finished_result(cell, out_dir)
        if done is not None:
            results[key] = done
            continue
        record = read_job_record(cell, out_dir)
        if record and states([record["job_id"]]).get(record["job_id"]) in ACTIVE_STATES:
            log(f"{cell.label}: following SLURM job {record['job_id']}, submitted {record['submitted']}")
            jobs[key] = record
            continue
        job = executor.submit(CellJob(cell, out_dir, list(base_args), list(extra_opts), options.cpus_per_task,
                                      save_timeout=max(5, options.signal_delay_s - 5)))
        record = {"job_id": str(job.job_id), "submitted": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "stdout": str(job.paths.stdout).replace("%j", str(job.job_id)),
                  "stderr": str(job.paths.stderr).replace("%j", str(job.job_id))}
        write_job_record(cell, out_dir, record)
        log(f"{cell.label}: submitted as SLURM job {job.job_id}")
        jobs[key] = record

    last_progress = time.time()
    while jobs:
        now = states([r["job_id"] for r in jobs.values()])
        for key in list(jobs):
            record, cell = jobs[key], runs[key]
            if now.get(record["job_id"]) in ACTIVE_STATES:
                continue
            result = finished_result(cell, out_dir)
            if result is None:
                state = now.get(record["job_id"], "no longer in squeue")
                result = Result("failed", log=os.path.join(cell_dir(cell, out_dir), "run.log"),
                                note=f"SLURM job {record['job_id']} ended ({state}) without a result; "
                                     f"its log: {record['stdout']}")
            results[key] = result
            del jobs[key]
            seed = dict(cell.overrides).get("SEED")
            name = cell.label + (f" (seed {seed})" if seed is not None else "")
            what = result.note if result.status == "failed" else outcome(result)
            log(f"{name}: SLURM job {record['job_id']}: {what}")
        if jobs and time.time() - last_progress >= progress_every:
            log(progress_line(runs, results, jobs, now, out_dir, max_iter))
            last_progress = time.time()
        if jobs:
            time.sleep(poll_every)
    return results


def progress_line(runs, results, jobs, now, out_dir, max_iter=None) -> str:
    """queued / running / done counts, and each running run's job and iteration."""
    queued = [k for k, r in jobs.items() if now.get(r["job_id"]) in ("PENDING", "REQUEUED", "CONFIGURING")]
    running = [k for k in jobs if k not in queued]
    parts = [f"SLURM: done {len(results)} of {len(runs)}, running {len(running)}, queued {len(queued)}"]
    for key in running:
        at = last_iteration(cell_dir(runs[key], out_dir))
        where = "starting" if at is None else f"iteration {at + 1}" + (f"/{max_iter}" if max_iter else "")
        seed = dict(runs[key].overrides).get("SEED")
        parts.append(f"[{runs[key].label}" + (f", seed {seed}" if seed is not None else "")
                     + f": job {jobs[key]['job_id']} {now.get(jobs[key]['job_id'], '?')}, {where}]")
    return "; ".join(parts)
