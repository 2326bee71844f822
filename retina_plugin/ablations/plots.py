"""
The PNG plots of a grid's results: AP against a parameter with error bars (beside the paper's
AP where it has one) and the AP curves of the periodic evaluations, mean ± std over seeds.
"""
import textwrap
from typing import Dict

from .cell import Cell
from .grids import GRIDS
from .result import curve_ap
from .seeds import cell_runs, mean_std, summarize


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def ap_label(seeds):
    return "bbox AP" + (" (mean ± std over seeds)" if seeds and seeds > 1 else "")


def save_figure(fig, ax, path, title, xlabel, ylabel, legend_size=7, legend_below=False):
    """Label, grid, legend (if anything is labelled; below the axes for many lines, which it
    would cover), write the PNG and close the figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    # Wrapped: a grid's long title would run past the figure's edges.
    ax.set_title("\n".join(textwrap.wrap(title, 75)), fontsize=9)
    ax.grid(True, alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        if legend_below:
            ax.legend(fontsize=legend_size, loc="upper center", bbox_to_anchor=(0.5, -0.15))
        else:
            ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def plot_series(name, results, seeds=None):
    """{"ours"|"paper": [(x, y, series value, y's std)]} of a plotted grid; cells without a
    finished run left out."""
    x_param, series_param = GRIDS[name].plot
    points = {"ours": [], "paper": []}
    for cell in GRIDS[name].cells:
        params = dict(cell.params)
        mean, std, count = summarize(cell_runs(cell, results, seeds))
        if count:
            points["ours"].append((params[x_param], mean, params[series_param], std))
        if cell.paper_ap is not None:
            points["paper"].append((params[x_param], cell.paper_ap, params[series_param], 0.0))
    return points


def plot_grid(name, results, path, seeds=None):
    plt = pyplot()
    x_param, series_param = GRIDS[name].plot
    points = plot_series(name, results, seeds)
    fig, ax = plt.subplots(figsize=(6, 4))
    series = sorted({p[2] for source in points.values() for p in source})
    colors = {value: f"C{i}" for i, value in enumerate(series)}
    for source, style in (("ours", "o-"), ("paper", "s--")):
        for value in series:
            pts = sorted(p for p in points[source] if p[2] == value)
            if pts:
                who = "measured here" if source == "ours" else "the paper (COCO, R-50)"
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[3] for p in pts],
                            fmt=style, color=colors[value], capsize=3,
                            label=f"{who}, {series_param} {value:g}")
    if x_param == "alpha":
        ax.set_xscale("logit")
    save_figure(fig, ax, path, GRIDS[name].title, x_param, ap_label(seeds))
    plt.close(fig)
    return path


def curves_of(cell: Cell, results, seeds=None):
    """[(iteration, mean AP, std, runs)] over the cell's runs with a curve, per evaluated iteration."""
    by_iteration: Dict[int, list] = {}
    for result in cell_runs(cell, results, seeds):
        if result is not None:
            for iteration, ap in result.curve:
                by_iteration.setdefault(iteration, []).append(curve_ap(ap))
    return [(it, *mean_std(aps), len(aps)) for it, aps in sorted(by_iteration.items())]


def plot_curves(name, results, path, seeds=None):
    """AP of the periodic evaluations against the iteration, one line per cell, mean ± std."""
    plt = pyplot()
    plotted = [(cell, curves_of(cell, results, seeds)) for cell in GRIDS[name].cells]
    plotted = [(cell, points) for cell, points in plotted if points]
    many = len(plotted) > 6
    fig, ax = plt.subplots(figsize=(6.5, 4 + (0.14 * len(plotted) + 0.6 if many else 0)))
    for i, (cell, points) in enumerate(plotted):
        ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                    fmt="o-", color=f"C{i % 10}", capsize=2, markersize=3, label=cell.label)
    save_figure(fig, ax, path, f"{GRIDS[name].title}: AP during training", "iteration", ap_label(seeds), 6, legend_below=many)
    plt.close(fig)
    return path
