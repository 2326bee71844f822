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


# Newest first. Until the paper-setup sweep has runs, the converged headline (one R) is shown
# beside the older from-scratch sweep, so a reader never gets the unconverged ranking alone.
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
    """Per data set: {"dataset", "R" (median over runs), "aps": {loss: [AP of each ok run]}}."""
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
            point = points.setdefault(dataset, {"dataset": dataset, "ratios": [], "aps": {}})
            if row["neg_pairs_per_pos"]:
                point["ratios"].append(float(row["neg_pairs_per_pos"]))
            if row["status"] == "ok" and row["AP"] not in ("", "nan"):
                point["aps"].setdefault(loss, []).append(float(row["AP"]))
    found = []
    for point in points.values():
        ratios = point.pop("ratios")
        if ratios and point["aps"]:
            point["R"] = statistics.median(ratios)
            found.append(point)
    return found


def measured_regimes(ratio: float, sources=SOURCES, root=REPO) -> List[dict]:
    """From each source with results, newest first, up to the first that spans R: the measured
    data set whose R is nearest to `ratio` (on a log scale), as {"dataset", "R",
    "ranking": [(loss, mean AP, runs)], "source", "what", "spans_r"}."""
    if not (ratio > 0 and math.isfinite(ratio)):
        return []
    regimes = []
    for source in sources:
        path = os.path.join(root, source.path)
        points = read_sweep(path, source) if os.path.isfile(path) else []
        if not points:
            continue
        point = min(points, key=lambda p: abs(math.log(p["R"] / ratio)))
        ranking = sorted(((loss, statistics.mean(aps), len(aps)) for loss, aps in point["aps"].items()),
                         key=lambda item: -item[1])
        md = os.path.join(os.path.dirname(source.path), "results.md")
        regimes.append({"dataset": point["dataset"], "R": point["R"], "ranking": ranking, "source": md,
                        "what": source.what, "spans_r": source.spans_r})
        if source.spans_r:
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
        where = ("the nearest measured regime is" if regime.get("spans_r", True)
                 else "measured so far at one R only, in")
        lines.append(
            f"What our measurements say at this R ({ratio:.3g}): {where} "
            f"{regime['dataset']} (R = {regime['R']:.3g}), where the losses ranked by AP: {ranking}. "
            f"Runs: {regime['what']}. Table: {regime['source']}."
        )
    return "\n".join(lines)
