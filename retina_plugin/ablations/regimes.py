"""
What the imbalance sweeps measured, looked up by R: tools/measure_imbalance.py ends its report
with the measured regime nearest to a data set's R and how the losses ranked there. Facts we
measured, read from the grids' results.csv; no advice beyond them.
"""
import csv
import math
import os
import statistics
from dataclasses import dataclass
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass(frozen=True)
class Source:
    """One grid's results.csv and what its runs are. A sweep's cells are "data set: loss"; a grid
    on one data set (`dataset`) names the loss only, and `cell_suffix` keeps the cells of its
    setup (the suffix is dropped from the loss's name). `spans_r`: the grid covers the range of
    R, so an older source adds nothing beside it."""

    path: str
    what: str
    dataset: Optional[str] = None
    cell_suffix: str = ""
    spans_r: bool = True


# Newest first. Until the paper-setup sweep is finished, what it has, the converged headline (one
# R) and the older from-scratch sweep are shown together, so a reader never gets the unconverged
# ranking alone.
SOURCES = (
    Source("docs/ablations/sweep/results.csv",
           "the paper's setup: pretrained backbone, no gradient clipping, the measured schedule"),
    Source("docs/ablations/headline/results.csv",
           "the paper's setup: pretrained backbone, no gradient clipping, the measured schedule",
           dataset="retina_sparse", cell_suffix=", no clipping", spans_r=False),
    Source("docs/ablations/imbalance/results.csv",
           "backbone from scratch, gradient clipping, 3000 iterations: not converged"),
)


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


def measured_regimes(ratio: float, sources=SOURCES, root=REPO) -> List[dict]:
    """From each source with results, newest first, up to the first that spans R: the measured
    data set whose R is nearest to `ratio` (on a log scale), as {"dataset", "R",
    "ranking": [(loss, mean AP, runs)], "source", "what", "spans_r", "one_r"}. Only data sets
    where every run of the grid has been trained are answered from."""
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
                        "what": source.what + under_way, "spans_r": spans_r, "one_r": source.dataset is not None})
        if spans_r:
            break
    return regimes


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
        )
    return "\n".join(lines)
