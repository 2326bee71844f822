"""
What the imbalance sweeps measured, looked up by R: tools/measure_imbalance.py ends its report
with the measured regime nearest to a data set's R and how the losses ranked there. Facts we
measured, read from the grids' results.csv; no advice beyond them.
"""
import csv
import math
import os
import re
import statistics
from dataclasses import dataclass
from typing import Dict, List, Optional

from .grids import CONVERGED_GAIN, PAPER_SETUP_ITERATIONS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass(frozen=True)
class Source:
    """One grid's results.csv and what its runs are. A sweep's cells are "data set: loss"; a grid
    on one data set (`dataset`) names the loss only, and `cell_suffix` keeps the cells of its
    setup (the suffix is dropped from the loss's name). `spans_r`: the grid covers the range of
    R, so an older source adds nothing beside it. `iterations`: its runs' schedule, where a
    schedule check (SCHEDULE_CHECKS) measured it at some data sets."""

    path: str
    what: str
    dataset: Optional[str] = None
    cell_suffix: str = ""
    spans_r: bool = True
    iterations: Optional[int] = None


# Newest first. Until the paper-setup sweep is finished, what it has, the converged headline (one
# R) and the older from-scratch sweep are shown together, so a reader never gets the unconverged
# ranking alone.
SOURCES = (
    Source("docs/ablations/sweep/results.csv",
           "the paper's setup: pretrained backbone, no gradient clipping, the schedule measured at retina_sparse",
           iterations=PAPER_SETUP_ITERATIONS),
    Source("docs/ablations/headline/results.csv",
           "the paper's setup: pretrained backbone, no gradient clipping, the schedule measured at retina_sparse",
           dataset="retina_sparse", cell_suffix=", no clipping", spans_r=False, iterations=PAPER_SETUP_ITERATIONS),
    Source("docs/ablations/imbalance/results.csv",
           "backbone from scratch, gradient clipping, 3000 iterations: not converged"),
)

# The schedule grid run at a data set (its results.csv): the paper-setup runs there beside the
# same runs at twice the iterations. A schedule measured at one R need not hold at another (at
# retina_imbalance_k48_single it did not), so the answer for a data set says what its check found.
SCHEDULE_CHECKS = {
    "retina_sparse": "docs/ablations/schedule/results.csv",
    "retina_imbalance_k48_single": "docs/ablations/schedule_k48_single/results.csv",
}
_SCHEDULE_CELL = re.compile(r"^(?P<loss>.*), no clipping, lr (?P<lr>[^,]+), (?P<iterations>\d+) iterations, (?P<steps>.*)$")


def schedule_gains(path, iterations: int) -> Dict[str, List[float]]:
    """{loss: [AP gained by twice `iterations`, each seed where both runs finished]} from a
    schedule grid's results.csv; the runs paired by loss, learning rate, steps and seed."""
    aps = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            match = _SCHEDULE_CELL.match(row["cell"])
            if match and row["status"] == "ok" and row["AP"] not in ("", "nan"):
                key = (match["loss"], match["lr"], match["steps"], row["seed"], int(match["iterations"]))
                aps[key] = float(row["AP"])
    gains: Dict[str, List[float]] = {}
    for (loss, lr, steps, seed, its), ap in sorted(aps.items()):
        if its == iterations and (loss, lr, steps, seed, 2 * its) in aps:
            gains.setdefault(loss, []).append(aps[(loss, lr, steps, seed, 2 * its)] - ap)
    return gains


def read_sweep(path, source: Optional[Source] = None) -> List[dict]:
    """Per data set: {"dataset", "R" (median over runs; None before any run measured it), "aps":
    {loss: [AP of each ok run]}, "not_run": runs of the grid there not trained yet, "runs": the
    grid's runs there}."""
    source = source or Source(path, "")
    points: Dict[str, dict] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if source.dataset is None:
                dataset, _, loss = row["cell"].partition(": ")
            elif row["cell"].endswith(source.cell_suffix):
                dataset, loss = source.dataset, row["cell"][: len(row["cell"]) - len(source.cell_suffix)]
            else:
                continue
            point = points.setdefault(dataset, {"dataset": dataset, "ratios": [], "aps": {}, "not_run": 0, "runs": 0})
            point["runs"] += 1
            point["not_run"] += row["status"] == "not run"
            if row["neg_pairs_per_pos"]:
                point["ratios"].append(float(row["neg_pairs_per_pos"]))
            if row["status"] == "ok" and row["AP"] not in ("", "nan"):
                point["aps"].setdefault(loss, []).append(float(row["AP"]))
    for point in points.values():
        ratios = point.pop("ratios")
        point["R"] = statistics.median(ratios) if ratios else None
    return list(points.values())


def measured_regimes(ratio: float, sources=SOURCES, root=REPO, checks=None) -> List[dict]:
    """From each source with results, newest first, up to the first that spans R: the measured
    data set whose R is nearest to `ratio` (on a log scale), as {"dataset", "R",
    "ranking": [(loss, mean AP, runs)], "source", "what", "spans_r", "one_r", "schedule"}. Only
    data sets where every run of the grid has been trained are answered from. "schedule": what a
    schedule check there found (`checks`: data set -> its results.csv; SCHEDULE_CHECKS)."""
    if not (ratio > 0 and math.isfinite(ratio)):
        return []
    regimes = []
    for source in sources:
        path = os.path.join(root, source.path)
        points = read_sweep(path, source) if os.path.isfile(path) else []
        # A data set whose runs are not all trained would rank only the losses that finished first.
        complete = [p for p in points if not p["not_run"] and p["R"] is not None and p["aps"]]
        if not complete:
            continue
        point = min(complete, key=lambda p: abs(math.log(p["R"] / ratio)))
        if any(r["dataset"] == point["dataset"] for r in regimes):
            continue  # the same runs, already shown from a newer source
        ranking = sorted(((loss, statistics.mean(aps), len(aps)) for loss, aps in point["aps"].items()),
                         key=lambda item: -item[1])
        md = os.path.join(os.path.dirname(source.path), "results.md")
        runs, not_run = sum(p["runs"] for p in points), sum(p["not_run"] for p in points)
        under_way = f" (under way: {runs - not_run} of {runs} runs)" if not_run else ""
        # An unfinished sweep spans only the R it has reached: the older sources are shown too.
        spans_r = source.spans_r and not not_run
        regimes.append({"dataset": point["dataset"], "R": point["R"], "ranking": ranking, "source": md,
                        "what": source.what + under_way, "spans_r": spans_r, "one_r": source.dataset is not None,
                        "schedule": schedule_check(point["dataset"], source.iterations, root, checks)})
        if spans_r:
            break
    return regimes


def schedule_check(dataset, iterations, root=REPO, checks=None) -> Optional[dict]:
    """What the schedule check at `dataset` measured for runs of `iterations`: {"iterations",
    "gains": {loss: [AP gained at twice them, each seed]}, "source"}; None where none was run."""
    path = (SCHEDULE_CHECKS if checks is None else checks).get(dataset)
    if iterations is None or path is None or not os.path.isfile(os.path.join(root, path)):
        return None
    gains = schedule_gains(os.path.join(root, path), iterations)
    if not gains:
        return None
    return {"iterations": iterations, "gains": gains, "source": os.path.join(os.path.dirname(path), "results.md")}


def converged(gains: List[float]) -> bool:
    return statistics.mean(gains) < CONVERGED_GAIN


def format_gains(gains: Dict[str, List[float]]) -> str:
    """'loss +2.2 AP (1 seed: not converged), ...': each loss's mean gain at twice the iterations."""
    def verdict(each):
        seeds = f"{len(each)} seed" + ("s" if len(each) > 1 else "")
        return f"{statistics.mean(each):+.1f} AP ({seeds}: {'converged' if converged(each) else 'not converged'})"

    return ", ".join(f"{loss} {verdict(each)}" for loss, each in gains.items())


def format_schedule_check(check: dict) -> str:
    return (f" Its schedule, checked there ({check['iterations']} against {2 * check['iterations']} iterations; "
            f"converged when doubling gains under {CONVERGED_GAIN} AP): {format_gains(check['gains'])}. "
            f"Table: {check['source']}.")


def format_regimes(ratio: float, regimes: List[dict]) -> str:
    """Lines for the end of the imbalance report."""
    if not regimes:
        return "No imbalance sweep has been measured here yet to compare this R with."
    lines = []
    for regime in regimes:
        ranking = " > ".join(f"{loss} {ap:.1f}" + (f" ({n} runs)" if n > 1 else " (1 run)")
                             for loss, ap, n in regime["ranking"])
        if regime.get("spans_r", True):
            where = "the nearest measured regime is"
        elif regime.get("one_r"):
            where = "measured so far at one R only, in"
        else:
            where = "the nearest of the regimes measured so far is"
        lines.append(
            f"What our measurements say at this R ({ratio:.3g}): {where} "
            f"{regime['dataset']} (R = {regime['R']:.3g}), where the losses ranked by AP: {ranking}. "
            f"Runs: {regime['what']}. Table: {regime['source']}."
            + (format_schedule_check(regime["schedule"]) if regime.get("schedule") else "")
        )
    return "\n".join(lines)
