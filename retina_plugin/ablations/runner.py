"""
Runs the cells of grids with train_net.py, one process per cell (and per seed), in
OUTPUT_DIR/cells/<the cell's overrides>. A finished cell (its result.json written) is never
rerun, so an interrupted run continues where it stopped; the cell in progress resumes from its
last checkpoint. While cells run, a progress line says how many are done, which run now and at
which iteration, and when all should be done. With `reuse_from`, a run whose resolved config
equals a finished run of another output directory takes that run's result instead of training
again (the imbalance sweep's retina_sparse point is the paper-regime headline's runs).
"""
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Optional, Sequence

from .configs import config_differences
from .cell import Cell
from .grids import GRIDS
from .prefix import cell_dirs_under, rebase_shared_prefix, shared_prefix_of, start_from_shared_prefix
from .progress import Progress
from .result import Result, outcome
from .run_dir import (
    cell_dir, finished_result, last_iteration, machines_of, median_of, read_metrics, summarize_metrics,
)


DIVERGED = re.compile(r"Loss became infinite or NaN at iteration=(\d+)")
# COCOEvaluator's bbox metrics as detectron2 prints them: names, then values.
COPYPASTE = re.compile(r"copypaste: (AP,AP50,AP75,APs,APm,APl)\n.*copypaste: ([^\n]+)")
# The project's training script, which runs every cell and its evaluation.
TRAIN_NET = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "train_net.py")
# Where a finished run's final weights are evaluated again with float64 class scores.
FLOAT64_SCORES_DIR = "eval_float64_scores"
# train_net.py logs which pretrained backbone a run starts from (retina_plugin.pretrain.require_pretrained).
PRETRAINED_BACKBONE = re.compile(r"Pretrained backbone: \S+ is .* \(sha256 ([0-9a-f]+)\)")


def run_logged(cmd, log_file, env, launch=None) -> int:
    """Run `cmd` with its output in `log_file` (its first line the command): its exit status."""
    with open(log_file, "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        if launch is None:
            return subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        return launch(cmd, log, env)


def run_cell(cell: Cell, out_dir, base_args: List[str], extra_opts: List[str], threads=None, launch=None):
    """Train and evaluate one cell with train_net.py (unless done before); return its Result.
    `launch(command, log file, env)` runs train_net.py and returns its exit status
    (default: subprocess.call; the SLURM executor's keeps the process to signal it)."""
    done = finished_result(cell, out_dir)
    if done is not None:
        return done
    directory = cell_dir(cell, out_dir)
    os.makedirs(directory, exist_ok=True)
    log_file = os.path.join(directory, "run.log")
    # The cell's own overrides last: they win over the command line's.
    cmd = [sys.executable, TRAIN_NET, *base_args, "--resume", "OUTPUT_DIR", directory]
    cmd += list(extra_opts) + cell.opts()
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.time()
    returncode = run_logged(cmd, log_file, env, launch)
    with open(log_file) as f:
        text = f.read()
    diverged = DIVERGED.search(text)
    backbone = PRETRAINED_BACKBONE.search(text)
    backbone = backbone.group(1) if backbone else None
    machines = machines_of(directory)
    records = read_metrics(directory)
    metrics, curve, ratio = summarize_metrics(records)
    seconds = round(time.time() - start, 1)
    share = median_of(records, "cls_loss_background_share")
    if returncode == 0 and metrics:
        result = Result("ok", metrics, curve=curve, neg_pairs_per_pos=ratio, seconds=seconds,
                        background_share=share, backbone_sha256=backbone,
                        shared_prefix_from=shared_prefix_of(directory), machines=machines,
                        metrics_float64=evaluate_with_float64_scores(directory, base_args, env, launch))
    elif diverged:
        result = Result("diverged", iteration=int(diverged.group(1)), curve=curve,
                        neg_pairs_per_pos=ratio, seconds=seconds, background_share=share,
                        backbone_sha256=backbone, machines=machines)
    else:
        # Not written to result.json: a failure (a killed process, a bad path) is rerun.
        return Result("failed", log=log_file)
    with open(os.path.join(directory, "result.json"), "w") as f:
        json.dump(result.__dict__, f)
    return result


def evaluate_with_float64_scores(directory, base_args=(), env=None, launch=None) -> Dict[str, float]:
    """The run's model_final.pth evaluated again with float64 class scores, in
    directory/FLOAT64_SCORES_DIR, from the config.yaml the run saved (and the data sets
    base_args registered with --dataset): its bbox metrics, or {} (no final weights, or the
    evaluation failed: its log says why). A float32 sigmoid rounds every logit above about 16.6 to a score
    of 1, so the runs of a confident loss (CE, Sampling-Free) rank their best detections by
    the order they come in; this AP ranks them by the model's logits."""
    weights = os.path.join(directory, "model_final.pth")
    if not os.path.isfile(weights):
        return {}
    out = os.path.join(directory, FLOAT64_SCORES_DIR)
    datasets = []
    for i, arg in enumerate(base_args):
        if arg == "--dataset":
            datasets += list(base_args[i:i + 4])
    cmd = [sys.executable, TRAIN_NET, *datasets, "--config-file", os.path.join(directory, "config.yaml"), "--eval-only",
           "MODEL.WEIGHTS", weights, "MODEL.RETINANET.SCORE_DTYPE_TEST", "float64", "OUTPUT_DIR", out]
    os.makedirs(out, exist_ok=True)
    log_file = os.path.join(out, "run.log")
    returncode = run_logged(cmd, log_file, env, launch)
    with open(log_file) as f:
        found = COPYPASTE.findall(f.read())
    if returncode != 0 or not found:
        return {}
    names, values = found[-1]
    return {name: float(value) for name, value in zip(names.split(","), values.split(","))}


def finished_runs(directories: Sequence[str]) -> List[str]:
    """The cell directories under `directories` (each an ablation OUTPUT_DIR) that finished."""
    found = []
    for directory in directories:
        cells = os.path.join(directory, "cells")
        for name in sorted(os.listdir(cells)) if os.path.isdir(cells) else ():
            run = os.path.join(cells, name)
            if os.path.isfile(os.path.join(run, "result.json")):
                found.append(run)
    return found


class StaleRunError(ValueError):
    """Finished runs in the output directory that trained another config than their cell now resolves to."""


def stale_runs(runs: Dict[str, Cell], out_dir, config_of) -> List[str]:
    """One line per finished run of `runs` in `out_dir` whose config.yaml differs from the config
    its cell resolves to now (the config file changed after it ran): its directory and the
    first differing keys, old -> new."""
    import yaml

    from ..config import _flatten

    lines = []
    for cell in runs.values():
        directory = cell_dir(cell, out_dir)
        config_file = os.path.join(directory, "config.yaml")
        if finished_result(cell, out_dir) is None or not os.path.isfile(config_file):
            continue
        cfg = config_of(cell)
        keys = config_differences(config_file, cfg)
        if keys:
            with open(config_file) as f:
                old = _flatten(yaml.safe_load(f) or {})
            new = _flatten(yaml.safe_load(cfg.dump()))
            changes = ", ".join(f"{k} {old.get(k, '(absent)')} -> {new[k]}" for k in keys[:3])
            lines.append(f"{directory}: {changes}")
    return lines


def reuse_same_run(cell: Cell, out_dir, cfg, candidates: Sequence[str]) -> Optional[Result]:
    """If a finished run in `candidates` trained exactly `cfg` (OUTPUT_DIR and the device
    aside), copy its result and metrics into `cell`'s directory and return its Result."""
    for run in candidates:
        if config_differences(os.path.join(run, "config.yaml"), cfg):
            continue
        directory = cell_dir(cell, out_dir)
        os.makedirs(directory, exist_ok=True)
        for name in ("metrics.json", "config.yaml"):
            if os.path.isfile(os.path.join(run, name)):
                shutil.copyfile(os.path.join(run, name), os.path.join(directory, name))
        with open(os.path.join(run, "result.json")) as f:
            record = json.load(f)
        # The record's paths are relative to the output directory that holds it (cells/<key>).
        if record.get("shared_prefix_from"):
            source_out_dir = os.path.dirname(os.path.dirname(os.path.normpath(run)))
            record["shared_prefix_from"] = rebase_shared_prefix(record["shared_prefix_from"], source_out_dir, out_dir)
        result = Result(**{**record, "reused_from": os.path.relpath(run, out_dir)})
        with open(os.path.join(directory, "result.json"), "w") as f:
            json.dump(result.__dict__, f)
        return result
    return None


def grid_runs(names, seeds=None, only: Sequence[str] = ()) -> Dict[str, Cell]:
    """{key: cell} of every distinct run of the named grids, each seed its own run: every
    cell's first seed first, so that an unfinished run of the grids already compares them all.
    `only`: just the cells whose label contains one of these texts."""
    cells = [cell for name in names for cell in GRIDS[name].cells]
    if only:
        cells = [cell for cell in cells if any(text in cell.label for text in only)]
    per_cell = [cell.seeded(seeds) for cell in cells]
    runs = {}
    for index in range(max((len(c) for c in per_cell), default=0)):
        for cell_runs in per_cell:
            if index < len(cell_runs):
                runs.setdefault(cell_runs[index].key, cell_runs[index])
    return runs


def unfinished_runs(runs: Dict[str, Cell], out_dir, max_iter=None) -> List[str]:
    """A line for each run without a result: where it stopped (its last logged iteration of
    its SOLVER.MAX_ITER, and the checkpoint it resumes from) or that it has not started."""
    lines = []
    for cell in runs.values():
        if finished_result(cell, out_dir) is not None:
            continue
        overrides = dict(cell.overrides)
        name = cell.label + (f", seed {overrides['SEED']}" if "SEED" in overrides else "")
        run_dir = cell_dir(cell, out_dir)
        at = last_iteration(run_dir)
        if at is None:
            lines.append(f"not started: {name}")
            continue
        total = overrides.get("SOLVER.MAX_ITER", max_iter)
        checkpoint = None
        if os.path.isfile(os.path.join(run_dir, "last_checkpoint")):
            with open(os.path.join(run_dir, "last_checkpoint")) as f:
                checkpoint = f.read().strip()
        lines.append(
            f"not finished: {name}: iteration {at + 1}" + (f" of {total}" if total else "")
            + (f", resumes from {checkpoint}" if checkpoint else ", no checkpoint: starts again")
        )
    return lines


def one_line_at_a_time(log):
    """`log` for the pool's threads and the progress thread together: print() writes a line and
    its newline apart, so two lines logged at once could run into one."""
    lock = threading.Lock()

    def locked(line):
        with lock:
            log(line)

    return locked


def run_grids(names, out_dir, base_args, extra_opts=(), jobs=1, log=print, dry=False, seeds=None,
              progress_every=60.0, max_iter=None, reuse_from: Sequence[str] = (),
              config_of: Optional[Callable[[Cell], object]] = None,
              execute: Optional[Callable[[Dict[str, Cell]], Dict[str, Result]]] = None,
              only: Sequence[str] = ()):
    """
    Run every run of the named grids (each distinct cell and seed once, finished ones not
    again); return {run key: Result}. With `dry`, only collect the finished runs' results.
    `seeds`: each cell runs with SEED 0 .. seeds - 1 (None: once, with the config's SEED).
    `reuse_from`: other output directories whose finished runs are taken for a run with the
    same resolved config (`config_of(cell)`) instead of training it again. `execute(runs)`
    trains the runs elsewhere (slurm.run_on_slurm) instead of in this machine's process pool.
    `only`: train just the cells whose label contains one of these texts; the other cells'
    finished runs are still returned, for the report.
    """
    log = one_line_at_a_time(log)
    every_run = grid_runs(names, seeds)
    runs = grid_runs(names, seeds, only)
    if config_of is not None:
        # A finished run is reported under its cell's name: if the config file changed since
        # it ran, the name no longer says what it trained, and the report would mislead.
        stale = stale_runs(every_run, out_dir, config_of)
        if stale and not dry:
            raise StaleRunError(
                f"{len(stale)} finished run(s) in {out_dir} trained another config than their cell "
                f"resolves to now (the config file changed after they ran):\n  " + "\n  ".join(stale[:5])
                + "\nMove them away (or choose another --output-dir) to train them again, or restore "
                "the config to report them."
            )
        for line in stale:
            log(f"warning: reported, but trained another config than the cell resolves to now: {line}")
    others = [d for d in reuse_from if os.path.abspath(d) != os.path.abspath(out_dir)]

    def comparable_runs(warn=False):
        candidates, unknown = [], []
        for run in finished_runs(others):
            (candidates if os.path.isfile(os.path.join(run, "config.yaml")) else unknown).append(run)
        if unknown and warn:
            # A clone holds only what was committed: a run kept without its config cannot be
            # shown to be the same run, so it is not taken.
            log(f"--reuse-from: {len(unknown)} finished run(s) have no config.yaml and cannot be compared "
                f"(e.g. {unknown[0]}); keep a finished cell's config.yaml in git (git add -f) to reuse it")
        return candidates

    def take_the_same_run(cell, candidates):
        if config_of is None or not candidates or finished_result(cell, out_dir) is not None:
            return
        reused = reuse_same_run(cell, out_dir, config_of(cell), candidates)
        if reused is not None:
            log(f"{cell.label}: the same config as {reused.reused_from}, not trained again")

    if others and not dry:
        candidates = comparable_runs(warn=True)
        for cell in runs.values():
            take_the_same_run(cell, candidates)
    # The report covers the whole grid: the runs not trained now (those another --only left
    # out, or every run when dry) come in from their finished results.
    not_trained_now = every_run if dry else {key: cell for key, cell in every_run.items() if key not in runs}
    finished_elsewhere = {}
    for key, cell in not_trained_now.items():
        result = finished_result(cell, out_dir)
        if result is not None:
            finished_elsewhere[key] = result
    if dry:
        for line in unfinished_runs(every_run, out_dir, max_iter):
            log(line)
        return finished_elsewhere

    def start_from_a_sibling(cell):
        # A sibling that differs only in its schedule (the schedule grid's 3000 beside 6000
        # iterations) has trained this run's first iterations: start from there (prefix.py).
        if config_of is None or finished_result(cell, out_dir) is not None:
            return
        started = start_from_shared_prefix(cell_dir(cell, out_dir), config_of(cell), cell_dirs_under([out_dir, *others]), out_dir)
        if started:
            log(f"{cell.label}, seed {dict(cell.overrides).get('SEED', '-')}: {started}")

    if execute is not None:  # from the siblings finished by now: the jobs run at once
        for cell in runs.values():
            start_from_a_sibling(cell)
        return {**finished_elsewhere, **execute(runs)}
    threads = max(1, (os.cpu_count() or 1) // jobs)
    progress = Progress(runs, out_dir, jobs, max_iter)
    stop = threading.Event()

    def report_progress():
        while not stop.wait(progress_every):
            log(progress.line())

    def one(cell):
        done_before = finished_result(cell, out_dir) is not None
        if others and not done_before:  # at its turn: a runner beside this one may have finished it since
            take_the_same_run(cell, comparable_runs())
        trained = finished_result(cell, out_dir) is None
        start_from_a_sibling(cell)  # at its turn: a sibling trained beside it has checkpoints by then
        progress.started(cell)
        result = run_cell(cell, out_dir, base_args, list(extra_opts), threads if jobs > 1 else None)
        progress.finished(cell, result, trained, newly_done=not done_before)
        seed = dict(cell.overrides).get("SEED")
        name = cell.label + (f" (seed {seed})" if seed is not None else "")
        log(f"{name}: {outcome(result)}; {progress.line()}")
        return cell.key, result

    watcher = threading.Thread(target=report_progress, daemon=True)
    watcher.start()
    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            return {**finished_elsewhere, **dict(pool.map(one, runs.values()))}
    finally:
        stop.set()
