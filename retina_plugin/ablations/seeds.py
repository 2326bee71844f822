"""
A cell's runs, one per seed, and the mean and spread of a metric over them: what every
report of a seeded grid is made of.
"""
import math
import statistics
from typing import Dict, List, Optional

from .cell import Cell
from .result import Result


def cell_runs(cell: Cell, results: Dict[str, Result], seeds=None) -> List[Optional[Result]]:
    """The results of a cell's runs (None for a run not finished), in seed order."""
    return [results.get(run.key) for run in cell.seeded(seeds)]


def mean_std(values):
    """(mean, sample standard deviation) of the finite values; std 0 for one value; NaNs if none."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return math.nan, math.nan
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(runs: List[Optional[Result]], metric="AP"):
    """(mean, std, number of finished ok runs) of a metric over a cell's runs."""
    values = [r.metrics.get(metric) for r in runs if r is not None and r.status == "ok"]
    values = [v for v in values if v is not None and math.isfinite(v)]
    mean, std = mean_std(values)
    return mean, std, len(values)


def format_mean(mean, std, count) -> str:
    if count == 0:
        return "-"
    return f"{mean:.1f}" if count == 1 else f"{mean:.1f} ± {std:.1f}"
