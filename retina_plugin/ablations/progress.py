"""
The runner's progress line: how many runs of the grids are done, which run now and at which
iteration, and when all should be done.
"""
import statistics
import threading
import time
from typing import Dict, List, Optional

from .cell import Cell
from .result import Result
from .run_dir import cell_dir, finished_result, last_iteration


class Progress:
    """Which runs are done, which are running and where, and an ETA from the iterations the
    finished ones trained in this process."""

    def __init__(self, runs: Dict[str, Cell], out_dir, jobs, max_iter=None):
        self.total, self.out_dir, self.jobs, self.max_iter = len(runs), out_dir, jobs, max_iter
        self.done_before = sum(finished_result(c, out_dir) is not None for c in runs.values())
        self.finished_now = 0
        # Seconds a whole run takes, from the runs finished now. A run resumed from a checkpoint
        # trained only part of its schedule: its time counts for that part, not for a run, and
        # only if that part is at least half of it: a short tail is mostly the final
        # evaluations, which scaling up to a whole run counts many times over (the resumed last
        # 1200 of 24000 iterations said 27 h where whole runs said 19 h). A diverged or failed
        # run stopped early and says nothing of a run's length.
        self.seconds_per_run: List[float] = []
        self.iterations_per_run: List[int] = []
        self.started_at: Dict[str, int] = {}
        self.running: Dict[str, Cell] = {}
        self.lock = threading.Lock()

    def _iterations_done(self, cell) -> int:
        at = last_iteration(cell_dir(cell, self.out_dir))
        return 0 if at is None else at + 1

    def started(self, cell):
        with self.lock:
            self.running[cell.key] = cell
            self.started_at[cell.key] = self._iterations_done(cell)

    def finished(self, cell, result: Result, trained: bool, newly_done: Optional[bool] = None):
        """`trained`: in this process (its time counts for the ETA); `newly_done`: not done when
        the process started (trained, or taken from a run finished beside it since)."""
        with self.lock:
            self.running.pop(cell.key, None)
            self.finished_now += trained if newly_done is None else newly_done
            total = self._iterations_done(cell)
            trained_now = total - self.started_at.pop(cell.key, 0)
            if trained and result.status == "ok" and result.seconds and 2 * trained_now >= total > 0:
                self.seconds_per_run.append(result.seconds * total / trained_now)
                self.iterations_per_run.append(total)

    def line(self) -> str:
        with self.lock:
            done = self.done_before + self.finished_now
            parts = [f"runs done {done} of {self.total}"]
            running_iterations = []
            for cell in self.running.values():
                seed = dict(cell.overrides).get("SEED")
                iterations = self._iterations_done(cell)
                running_iterations.append(iterations)
                of_max = f"/{self.max_iter}" if self.max_iter else ""
                where = f"iteration {iterations}{of_max}" if iterations else "starting"
                parts.append(f"[{cell.label}" + (f", seed {seed}" if seed is not None else "") + f": {where}]")
            left = self.total - done
            if self.seconds_per_run and left:
                # The running runs' done share is not left: a run's length is MAX_ITER, or
                # the finished runs' when the grids set none.
                length = self.max_iter or statistics.median(self.iterations_per_run)
                running_done = sum(min(1.0, iterations / length) for iterations in running_iterations)
                eta = statistics.mean(self.seconds_per_run) * (left - running_done) / self.jobs
                parts.append(f"ETA {time.strftime('%H:%M', time.localtime(time.time() + eta))} ({eta / 60:.0f} min)")
            elif left:
                parts.append("ETA after the first run finishes")
        return "; ".join(parts)
