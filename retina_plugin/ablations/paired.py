"""
Seed-by-seed comparisons, for a grid whose cells are losses crossed with a factor (the
headline: each loss without and with gradient clipping). detectron2 seeds every generator
with SEED, so two runs of one seed start from the same head weights and see the images in
the same order: the difference of their APs is free of most of the spread between seeds that
the mean ± std columns carry, and says in how many seeds one cell was ahead.
"""
import math
from typing import Dict, List, Optional

from .grids import GRIDS
from .result import Result
from .seeds import cell_runs, mean_std


AHEAD = 0.05  # a difference that prints as +0.1 or more
INTERVAL_HEADER = "95% interval of the mean (paired t)"


def paired_differences(runs: List[Optional[Result]], reference: List[Optional[Result]], metric="AP"):
    """metric(run) - metric(reference run) for each seed, None where either did not finish ok."""
    def value(result):
        if result is None or result.status != "ok":
            return None
        v = result.metrics.get(metric)
        return v if v is not None and math.isfinite(v) else None

    return [None if value(a) is None or value(b) is None else value(a) - value(b)
            for a, b in zip(runs, reference)]


def t_quantile(p: float, df: int) -> float:
    """
    The p-quantile of Student's t distribution with `df` degrees of freedom, by bisection on
    its CDF F(t) = 1/2 + integral from 0 to t of

        Gamma((df + 1) / 2) / (sqrt(df pi) Gamma(df / 2)) * (1 + x^2 / df)^(-(df + 1) / 2) dx

    (Simpson's rule), for 0.5 <= p < 1. No SciPy in the environment; accurate to 1e-6.
    """
    if not 0.5 <= p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 <= p < 1 and df >= 1, got p={p}, df={df}")
    scale = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def cdf(t, steps=4000):
        h = t / steps
        ys = [scale * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2) for i in range(steps + 1)]
        return 0.5 + h / 3 * (ys[0] + ys[-1] + 4 * sum(ys[1:-1:2]) + 2 * sum(ys[2:-1:2]))

    low, high = 0.0, 1.0
    while cdf(high) < p:
        high *= 2
    while high - low > 1e-7:
        middle = (low + high) / 2
        low, high = (middle, high) if cdf(middle) < p else (low, middle)
    return (low + high) / 2


def paired_interval(differences, level=0.95):
    """The `level` confidence interval of the mean difference (paired t), None under 2 seeds."""
    finished = [d for d in differences if d is not None]
    if len(finished) < 2:
        return None
    mean, std = mean_std(finished)
    half = t_quantile((1 + level) / 2, len(finished) - 1) * std / math.sqrt(len(finished))
    return mean - half, mean + half


def format_differences(differences) -> List[str]:
    """[each seed, mean ± std of the differences, its 95% interval, seeds ahead] as table cells."""
    each = ", ".join("-" if d is None else f"{d:+.1f}" for d in differences)
    finished = [d for d in differences if d is not None]
    if not finished:
        return [each, "-", "-", "-"]
    mean, std = mean_std(finished)
    spread = f"{mean:+.1f}" if len(finished) == 1 else f"{mean:+.1f} ± {std:.1f}"
    interval = paired_interval(finished)
    # With 2 seeds t's quantile is 12.7: the interval says how little two seeds pin down.
    between = "-" if interval is None else f"{interval[0]:+.1f} to {interval[1]:+.1f}"
    # Ahead by what the table shows (0.1 AP), not by a rounding error.
    return [each, spread, between, f"{sum(d >= AHEAD for d in finished)} of {len(finished)}"]


def paired_tables(name, results: Dict[str, Result], seeds) -> List[str]:
    """
    Two tables for grid `name` (its cells carry a "loss" param and its `factor` param): each
    loss minus the grid's `reference` loss at the same level of the factor, and each loss at
    the factor's level 1 minus level 0; seed by seed, then the mean ± std of the differences.
    """
    grid = GRIDS[name]
    cells = {(dict(c.params)["loss"], dict(c.params)[grid.factor]): c for c in grid.cells}
    losses = list(dict.fromkeys(loss for loss, _ in cells))
    levels = sorted({level for _, level in cells})
    runs = {key: cell_runs(cell, results, seeds) for key, cell in cells.items()}
    lines = [f"Seed by seed (runs of one seed share the head's initial weights and the order of "
             f"the images): each loss against {grid.reference}, at the same {grid.factor}. The interval "
             f"is the mean difference's 95% confidence interval from Student's t over the seeds: "
             f"wide for 2 or 3 seeds, and excluding 0 only where every seed agrees closely.\n",
             f"| cell | AP - AP({grid.reference}), each seed | mean ± std | {INTERVAL_HEADER} | seeds ahead by 0.1 or more |",
             "|---|---|---|---|---|"]
    for level in levels:
        for loss in losses:
            if loss != grid.reference and (loss, level) in cells and (grid.reference, level) in cells:
                differences = paired_differences(runs[loss, level], runs[grid.reference, level])
                lines.append(f"| {cells[loss, level].label} | " + " | ".join(format_differences(differences)) + " |")
    if len(levels) == 2:
        low, high = levels
        lines += ["", f"The effect of {grid.factor} on each loss: AP with it minus AP without it, seed by seed.\n",
                  f"| loss | AP({grid.factor}) - AP(no {grid.factor}), each seed | mean ± std | {INTERVAL_HEADER} | seeds ahead by 0.1 or more |",
                  "|---|---|---|---|---|"]
        for loss in losses:
            if (loss, low) in cells and (loss, high) in cells:
                differences = paired_differences(runs[loss, high], runs[loss, low])
                lines.append(f"| {loss} | " + " | ".join(format_differences(differences)) + " |")
    return lines + [""]
