"""
Reports of grids' results: results.md (one row per cell: each seed's AP and their mean and
standard deviation, beside the paper's AP), results.csv (one row per run) and PNG plots: AP
against a parameter with error bars, the AP curves of the periodic evaluations, and for the
imbalance sweep each loss's AP minus balanced CE's against R.
"""
import csv
import math
import os
import statistics
import textwrap
from typing import Dict, List

from .cell import Cell
from .grids import GRIDS, METRICS, PAPER_SOURCE
from .paired import paired_differences, paired_interval, paired_tables
from .prefix import shared_prefix_run
from .result import format_ap
from .seeds import cell_runs, mean_std, summarize


def format_mean(mean, std, count) -> str:
    if count == 0:
        return "-"
    return f"{mean:.1f}" if count == 1 else f"{mean:.1f} ± {std:.1f}"


def _forked_from(row, out_dir) -> str:
    """The run a run took its first iterations from, and whether that run is there to read."""
    source = shared_prefix_run(row["shared_prefix_from"])
    text = f"`{row['shared_prefix_from']}`"
    if source is not None and not os.path.isfile(os.path.join(out_dir, source, "result.json")):
        # A run stopped before its end is not kept; the iterations taken from it live on here.
        text += " (a run that did not finish, not kept: those iterations' records are in this run's metrics.json)"
    return text


def write_reports(names, results, out_dir, title_note="", seeds=None):
    """results.md, results.csv and the PNG plots in out_dir; return their paths."""
    rows, md = [], [f"# Ablations\n\n{title_note}".rstrip() + "\n"]
    for name in names:
        grid = GRIDS[name]
        md.append(f"## {name}: {grid.title}\n")
        if grid.note:
            md.append(grid.note + "\n")
        if seeds is None:
            md.append("| cell | AP | AP50 | AP75 | APs | APm | APl | paper's AP |")
            md.append("|---|---|---|---|---|---|---|---|")
        else:
            md.append("| cell | AP, each seed | AP mean ± std | AP50 | AP75 | APs | APm | APl | paper's AP |")
            md.append("|---|---|---|---|---|---|---|---|---|")
        for cell in grid.cells:
            runs = cell_runs(cell, results, seeds)
            paper = "-" if cell.paper_ap is None else f"{cell.paper_ap:.1f}"
            if seeds is None:
                result = runs[0]
                ours = [format_ap(result, m) for m in METRICS]
                if result is not None and result.status != "ok":
                    ours = [ours[0]] + [""] * (len(METRICS) - 1)
            else:
                each = ", ".join(format_ap(r) for r in runs)
                ours = [each] + [format_mean(*summarize(runs, m)) for m in METRICS]
                failed = sum(1 for r in runs if r is not None and r.status != "ok")
                finished = summarize(runs, "AP")[2]
                if failed and finished:
                    # A mean over the runs that finished alone would hide that the others did not.
                    ours[1] += f" ({finished} of {finished + failed} runs; {failed} did not finish)"
            md.append(f"| {cell.label} | " + " | ".join(ours) + f" | {paper} |")
            for run, result in zip(cell.seeded(seeds), runs):
                row = {"grid": name, "cell": cell.label, "seed": dict(run.overrides).get("SEED", ""), "dir": run.key}
                row["status"] = "not run" if result is None else result.describe()
                ok = result is not None and result.status == "ok"
                for metric in METRICS:
                    row[metric] = result.metrics.get(metric, "") if ok else ""
                row["neg_pairs_per_pos"] = "" if result is None or result.neg_pairs_per_pos is None else result.neg_pairs_per_pos
                row["paper_AP"] = "" if cell.paper_ap is None else cell.paper_ap
                row["background_share"] = "" if result is None or result.background_share is None else result.background_share
                row["reused_from"] = (result.reused_from or "") if result is not None else ""
                row["backbone_sha256"] = (result.backbone_sha256 or "") if result is not None else ""
                row["shared_prefix_from"] = (result.shared_prefix_from or "") if result is not None else ""
                row["machines"] = "; ".join(result.machines) if result is not None else ""
                row["AP_float64_scores"] = result.metrics_float64.get("AP", "") if ok else ""
                rows.append(row)
        md.append("")
        reused = [r for r in rows if r["grid"] == name and r["reused_from"]]
        if reused:
            md.append("Runs not trained again, because a finished run had the same resolved config "
                      "(`--reuse-from`): " + "; ".join(
                          f"{r['cell']}" + (f" seed {r['seed']}" if r["seed"] != "" else "") + f" is `{r['reused_from']}`"
                          for r in reused) + ".\n")
        forked = [r for r in rows if r["grid"] == name and r["shared_prefix_from"]]
        if forked:
            md.append("Runs that started from a checkpoint of a run of another schedule, whose first "
                      "iterations had the same config and learning rate (the same iterations: "
                      "retina_plugin/ablations/prefix.py): " + "; ".join(
                          f"{r['cell']}" + (f" seed {r['seed']}" if r["seed"] != "" else "") + f" took {_forked_from(r, out_dir)}"
                          for r in forked) + ".\n")
        backbones = sorted({r["backbone_sha256"] for r in rows if r["grid"] == name and r["backbone_sha256"]})
        if len(backbones) > 1:
            # Another machine's pretraining makes another backbone: such runs do not compare.
            md.append(f"**These runs started from {len(backbones)} different pretrained backbones** "
                      f"(sha256 {', '.join(backbones)}; the `backbone_sha256` column of results.csv).\n")
        machines = sorted({m for r in rows if r["grid"] == name and r["machines"] for m in r["machines"].split("; ")})
        if len(machines) > 1:
            # Another CPU's arithmetic makes another run from the same seed (retina_plugin.machine).
            md.append(f"**These runs were trained on {len(machines)} different machines** "
                      f"({'; '.join(machines)}; the `machines` column of results.csv).\n")
        if grid.kind == "sweep":
            md += sweep_table(name, results, seeds)
        if grid.kind == "schedule":
            md += schedule_table(name, results, seeds)
        if grid.reference and seeds is not None:
            md += paired_tables(name, results, seeds)
    md.append(f"paper's AP: {PAPER_SOURCE}, for reference; not measured here.\n")
    os.makedirs(out_dir, exist_ok=True)
    paths = {"md": os.path.join(out_dir, "results.md"), "csv": os.path.join(out_dir, "results.csv")}
    with open(paths["md"], "w") as f:
        f.write("\n".join(md))
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["grid"])
        writer.writeheader()
        writer.writerows(rows)
    for name in names:
        grid = GRIDS[name]
        if grid.plot:
            paths[name] = plot_grid(name, results, os.path.join(out_dir, f"{name}.png"), seeds)
        if grid.kind == "sweep":
            paths[name] = plot_sweep(name, results, os.path.join(out_dir, f"{name}.png"), seeds)
        if any(r is not None and r.curve for c in grid.cells for r in cell_runs(c, results, seeds)):
            paths[f"{name}_curves"] = plot_curves(name, results, os.path.join(out_dir, f"{name}_curves.png"), seeds)
    return paths


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ap_label(seeds):
    return "bbox AP" + (" (mean ± std over seeds)" if seeds and seeds > 1 else "")


def _save(fig, ax, path, title, xlabel, ylabel, legend_size=7, legend_below=False):
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
    plt = _pyplot()
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
    _save(fig, ax, path, GRIDS[name].title, x_param, _ap_label(seeds))
    plt.close(fig)
    return path


def curves_of(cell: Cell, results, seeds=None):
    """[(iteration, mean AP, std, runs)] over the cell's runs with a curve, per evaluated iteration."""
    by_iteration: Dict[int, list] = {}
    for result in cell_runs(cell, results, seeds):
        if result is not None:
            for iteration, ap in result.curve:
                # COCOEvaluator's NaN means the model detected nothing: an AP of 0 (as Result).
                by_iteration.setdefault(iteration, []).append(ap if ap == ap else 0.0)
    return [(it, *mean_std(aps), len(aps)) for it, aps in sorted(by_iteration.items())]


def plot_curves(name, results, path, seeds=None):
    """AP of the periodic evaluations against the iteration, one line per cell, mean ± std."""
    plt = _pyplot()
    plotted = [(cell, curves_of(cell, results, seeds)) for cell in GRIDS[name].cells]
    plotted = [(cell, points) for cell, points in plotted if points]
    many = len(plotted) > 6
    fig, ax = plt.subplots(figsize=(6.5, 4 + (0.14 * len(plotted) + 0.6 if many else 0)))
    for i, (cell, points) in enumerate(plotted):
        ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                    fmt="o-", color=f"C{i % 10}", capsize=2, markersize=3, label=cell.label)
    _save(fig, ax, path, f"{GRIDS[name].title}: AP during training", "iteration", _ap_label(seeds), 6, legend_below=many)
    plt.close(fig)
    return path


REFERENCE_LOSS = "balanced CE"  # what a sweep compares every other loss with
OUTCOME_ONLY = "CE, standard init"  # a loss whose outcome (trains or fails) the sweep shows


def sweep_losses(name) -> List[str]:
    """The short names of a sweep's losses (its cells' "loss" param), in the grid's order."""
    return list(dict.fromkeys(dict(c.params)["loss"] for c in GRIDS[name].cells))


def sweep_points(name, results, seeds=None):
    """
    Per data set of a sweep grid, in the grid's order: {"dataset", "R" (median R that its runs
    logged), "ap": {loss: (mean, std, n)}, "share": {loss: mean background share}, "delta":
    {loss: (mean of AP(loss) - AP(balanced CE), its std, the seeds both finished, the mean's
    95% interval or None)} for every loss but the reference and the outcome-only one,
    "outcome": {loss: its runs' outcomes} for the outcome-only one}. The differences are
    paired, seed by seed: runs of one seed share the head's initial weights and the order of
    the images, so their difference is free of most of the spread between seeds.
    """
    points = []
    for cell in GRIDS[name].cells:
        params = dict(cell.params)
        dataset, loss = params["dataset"], params["loss"]
        if not points or points[-1]["dataset"] != dataset:
            points.append({"dataset": dataset, "ratios": [], "ap": {}, "share": {}, "delta": {}, "outcome": {},
                           "runs": {}})
        point, runs = points[-1], cell_runs(cell, results, seeds)
        point["ratios"] += [r.neg_pairs_per_pos for r in runs if r is not None and r.neg_pairs_per_pos]
        if loss == OUTCOME_ONLY:
            point["outcome"][loss] = "; ".join(format_ap(r) for r in runs)
            continue
        shares = [r.background_share for r in runs if r is not None and r.background_share is not None]
        point["ap"][loss], point["share"][loss] = summarize(runs), mean_std(shares)[0]
        point["runs"][loss] = runs
    for point in points:
        ratios, runs = point.pop("ratios"), point.pop("runs")
        point["R"] = statistics.median(ratios) if ratios else math.nan
        reference = runs.get(REFERENCE_LOSS, [])
        for loss, loss_runs in runs.items():
            if loss != REFERENCE_LOSS:
                differences = [d for d in paired_differences(loss_runs, reference) if d is not None]
                point["delta"][loss] = (*mean_std(differences), len(differences), paired_interval(differences))
    return points


# The schedule check: a schedule has converged when twice its iterations gain less than this
# much AP, on average over the seeds that finished both.
CONVERGED_GAIN = 1.5


def schedule_table(name, results, seeds=None) -> List[str]:
    """For each cell whose same run at twice the iterations is in the grid: the AP that
    doubling gained, each seed and on average, and whether that is under CONVERGED_GAIN.
    Beside it the mean AP50 and AP75 gains: where the AP came from, classification (AP50
    saturates once every object is found) or the boxes' precision at high IoU."""
    cells = GRIDS[name].cells
    by_params = {tuple(sorted(c.params)): c for c in cells}
    lines = [f"Converged: twice the iterations gain less than {CONVERGED_GAIN} AP on average.\n",
             "| cell | AP gained at twice the iterations, each seed | mean | AP50 gained, mean | AP75 gained, mean | converged |",
             "|---|---|---|---|---|---|"]
    for cell in cells:
        params = dict(cell.params)
        twice = by_params.get(tuple(sorted({**params, "iterations": 2 * params["iterations"]}.items())))
        if twice is None:
            continue
        pairs = [(short, long) for short, long in zip(cell_runs(cell, results, seeds), cell_runs(twice, results, seeds))]
        both_ok = [all(r is not None and r.status == "ok" for r in pair) for pair in pairs]

        def gains(metric):
            return [long.metrics[metric] - short.metrics[metric] if ok else None
                    for (short, long), ok in zip(pairs, both_ok)]

        def mean_of(values):
            finished = [g for g in values if g is not None and math.isfinite(g)]
            return sum(finished) / len(finished) if finished else None, len(finished)

        ap_gains = gains("AP")
        mean, count = mean_of(ap_gains)
        each = ", ".join("not both run" if g is None else f"{g:+.1f}" for g in ap_gains)
        if mean is None:
            lines.append(f"| {cell.label} | {each} | - | - | - | not measured |")
            continue
        verdict = ("yes" if mean < CONVERGED_GAIN else "no") + (
            "" if count == len(ap_gains) else f" (from {count} of {len(ap_gains)} seeds)")
        detail = " | ".join("-" if m is None else f"{m:+.1f}" for m, _ in map(mean_of, map(gains, ("AP50", "AP75"))))
        lines.append(f"| {cell.label} | {each} | {mean:+.1f} | {detail} | {verdict} |")
    return lines + [""]


def sweep_table(name, results, seeds=None) -> List[str]:
    losses = sweep_losses(name)
    scored = [loss for loss in losses if loss != OUTCOME_ONLY]
    compared = [loss for loss in scored if loss != REFERENCE_LOSS]
    outcomes = [loss for loss in losses if loss == OUTCOME_ONLY]
    header = (["data set", "R (training's median)"] + [f"{loss} AP" for loss in scored]
              + [f"AP({loss}) - AP({REFERENCE_LOSS})" for loss in compared]
              + [f"background's share of the class loss: {', '.join(scored)}"] + outcomes)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def percent(share):
        return "-" if share is None or share != share else f"{100 * share:.0f}%"

    def difference(delta):
        mean, std, runs, interval = delta
        if mean != mean:
            return "-"
        if runs == 1:
            return f"{mean:+.1f} (1 seed)"  # no spread from one pair
        return f"{mean:+.1f} ± {std:.1f} [{interval[0]:+.1f}, {interval[1]:+.1f}]"

    for p in sweep_points(name, results, seeds):
        row = [p["dataset"], "-" if p["R"] != p["R"] else f"{p['R']:.3g}"]
        row += [format_mean(*p["ap"].get(loss, (math.nan, math.nan, 0))) for loss in scored]
        row += [difference(p["delta"].get(loss, (math.nan, math.nan, 0, None))) for loss in compared]
        row.append(", ".join(percent(p["share"].get(loss)) for loss in scored))
        row += [p["outcome"].get(loss, "-") for loss in outcomes]
        lines.append("| " + " | ".join(row) + " |")
    return lines + [
        "",
        f"AP(loss) - AP({REFERENCE_LOSS}): paired, the mean ± std over the seeds both finished of "
        "the difference between runs of the same seed (they share the head's initial weights and "
        "the order of the images), and in brackets the mean's 95% interval (Student's t: wide "
        "for 2 seeds).",
        "",
        "background's share: the median over training of the background anchors' part of the "
        "classification loss (`cls_loss_background_share`), the mean over seeds. The paper's "
        "case against CE is that this part dominates.",
        "",
    ]


def plot_sweep(name, results, path, seeds=None):
    """AP(loss) - AP(balanced CE) against R (log axis) for each compared loss, error bars from
    the seeds' spread."""
    plt = _pyplot()
    points = [p for p in sweep_points(name, results, seeds) if p["R"] == p["R"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    compared = [loss for loss in sweep_losses(name) if loss not in (REFERENCE_LOSS, OUTCOME_ONLY)]
    for i, loss in enumerate(compared):
        pts = [p for p in points if p["delta"].get(loss, (math.nan,))[0] == p["delta"].get(loss, (math.nan,))[0]]
        if pts:
            ax.errorbar([p["R"] for p in pts], [p["delta"][loss][0] for p in pts],
                        yerr=[p["delta"][loss][1] for p in pts], fmt="o-", color=f"C{i}", capsize=3,
                        label=f"AP({loss}) - AP({REFERENCE_LOSS})")
            # A difference from one seed has no spread to draw: hollow, so it does not pass
            # for one with a tiny error bar.
            single = [p for p in pts if p["delta"][loss][2] == 1]
            ax.plot([p["R"] for p in single], [p["delta"][loss][0] for p in single], "o",
                    color=f"C{i}", markerfacecolor="white", zorder=3)
    if any(p["delta"].get(loss, (0, 0, 0))[2] == 1 for p in points for loss in compared):
        ax.plot([], [], "o", color="gray", markerfacecolor="white", label="hollow: 1 seed")
    for p in points:
        ax.annotate(p["dataset"].replace("retina_", ""), (p["R"], 0), fontsize=6,
                    textcoords="offset points", xytext=(2, -10))
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xscale("log")
    _save(fig, ax, path, GRIDS[name].title, "R: negative (anchor, class) pairs per positive pair",
          f"AP difference to {REFERENCE_LOSS} (measured here)")
    plt.close(fig)
    return path
