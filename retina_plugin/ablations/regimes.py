"""
What the imbalance sweeps measured, looked up by R: tools/measure_imbalance.py ends its report
with the measured regime nearest to a data set's R and how the losses ranked there. Facts we
measured, read from the sweeps' results.csv; no advice beyond them.
"""
import csv
import math
import os
import statistics
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The sweeps, newest first: (results.csv, what its runs are).
SWEEPS = (
    ("docs/ablations/sweep/results.csv",
     "the paper's setup: pretrained backbone, no gradient clipping, the measured schedule"),
    ("docs/ablations/imbalance/results.csv",
     "backbone from scratch, gradient clipping, 3000 iterations: not converged"),
)


def read_sweep(path) -> List[dict]:
    """Per data set: {"dataset", "R" (median over runs), "aps": {loss: [AP of each ok run]}}."""
    points: Dict[str, dict] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            dataset, _, loss = row["cell"].partition(": ")
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


def nearest_regime(ratio: float, sweeps=SWEEPS, root=REPO) -> Optional[dict]:
    """The measured data set whose R is nearest to `ratio` (on a log scale), from the newest
    sweep with results: {"dataset", "R", "ranking": [(loss, mean AP, runs)], "source", "what"}."""
    if not (ratio > 0 and math.isfinite(ratio)):
        return None
    for relative, what in sweeps:
        path = os.path.join(root, relative)
        points = read_sweep(path) if os.path.isfile(path) else []
        if not points:
            continue
        point = min(points, key=lambda p: abs(math.log(p["R"] / ratio)))
        ranking = sorted(((loss, statistics.mean(aps), len(aps)) for loss, aps in point["aps"].items()),
                         key=lambda item: -item[1])
        md = os.path.join(os.path.dirname(relative), "results.md")
        return {"dataset": point["dataset"], "R": point["R"], "ranking": ranking, "source": md, "what": what}
    return None


def format_regime(ratio: float, regime: Optional[dict]) -> str:
    """Lines for the end of the imbalance report."""
    if regime is None:
        return "No imbalance sweep has been measured here yet to compare this R with."
    ranking = " > ".join(f"{loss} {ap:.1f}" + (f" ({n} runs)" if n > 1 else " (1 run)") for loss, ap, n in regime["ranking"])
    return (
        f"What our measurements say at this R ({ratio:.3g}): the nearest measured regime is "
        f"{regime['dataset']} (R = {regime['R']:.3g}), where the losses ranked by AP: {ranking}. "
        f"Runs: {regime['what']}. Table: {regime['source']}."
    )
