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


def paired_differences(runs: List[Optional[Result]], reference: List[Optional[Result]], metric="AP"):
    """metric(run) - metric(reference run) for each seed, None where either did not finish ok."""
    def value(result):
        if result is None or result.status != "ok":
            return None
        v = result.metrics.get(metric)
        return v if v is not None and math.isfinite(v) else None

    return [None if value(a) is None or value(b) is None else value(a) - value(b)
            for a, b in zip(runs, reference)]


def format_differences(differences) -> List[str]:
    """[each seed, mean ± std of the differences, seeds ahead] as table cells."""
    each = ", ".join("-" if d is None else f"{d:+.1f}" for d in differences)
    finished = [d for d in differences if d is not None]
    if not finished:
        return [each, "-", "-"]
    mean, std = mean_std(finished)
    spread = f"{mean:+.1f}" if len(finished) == 1 else f"{mean:+.1f} ± {std:.1f}"
    # Ahead by what the table shows (0.1 AP), not by a rounding error.
    return [each, spread, f"{sum(d >= AHEAD for d in finished)} of {len(finished)}"]


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
             f"the images): each loss against {grid.reference}, at the same {grid.factor}.\n",
             f"| cell | AP - AP({grid.reference}), each seed | mean ± std | seeds ahead by 0.1 or more |",
             "|---|---|---|---|"]
    for level in levels:
        for loss in losses:
            if loss != grid.reference and (loss, level) in cells and (grid.reference, level) in cells:
                differences = paired_differences(runs[loss, level], runs[grid.reference, level])
                lines.append(f"| {cells[loss, level].label} | " + " | ".join(format_differences(differences)) + " |")
    if len(levels) == 2:
        low, high = levels
        lines += ["", f"The effect of {grid.factor} on each loss: AP with it minus AP without it, seed by seed.\n",
                  f"| loss | AP({grid.factor}) - AP(no {grid.factor}), each seed | mean ± std | seeds ahead by 0.1 or more |",
                  "|---|---|---|---|"]
        for loss in losses:
            if (loss, low) in cells and (loss, high) in cells:
                differences = paired_differences(runs[loss, high], runs[loss, low])
                lines.append(f"| {loss} | " + " | ".join(format_differences(differences)) + " |")
    return lines + [""]
