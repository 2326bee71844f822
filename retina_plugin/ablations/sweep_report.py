"""
The imbalance sweep's report: per data set, R and each loss's AP beside balanced CE's (paired
over seeds), the table and the plot of those differences against R.
"""
import math
import os
import statistics
from typing import Dict, List

from .configs import saved_config
from .grids import CONVERGED_GAIN, GRIDS
from .paired import paired_differences, paired_interval
from .plots import pyplot, save_figure
from .regimes import REPO, converged, format_gains, schedule_check
from .result import curve_ap, format_ap
from .run_dir import cell_dir
from .seeds import cell_runs, format_mean, mean_std, summarize


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


def sweep_table(name, results, seeds=None, checks=None, root=REPO) -> List[str]:
    """The sweep's table, its notes and what the schedule checks at its data sets found
    (`checks`: data set -> a schedule grid's results.csv under `root`; regimes.SCHEDULE_CHECKS)."""
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
    ] + schedule_check_lines(name, checks, root)


def schedule_checks(name, checks=None, root=REPO) -> Dict[str, dict]:
    """{data set: what a schedule check there found (regimes.schedule_check), with "short": its
    iterations were short for some loss} for the sweep's data sets where one ran."""
    iterations = GRIDS[name].iterations
    found = {}
    for dataset in dict.fromkeys(dict(c.params)["dataset"] for c in GRIDS[name].cells):
        check = schedule_check(dataset, iterations, root, checks) if iterations else None
        if check is not None:
            found[dataset] = {**check, "short": not all(converged(g) for g in check["gains"].values())}
    return found


def short_schedule_datasets(name, checks=None, root=REPO) -> List[str]:
    """The sweep's data sets where a schedule check found its iterations short for some loss."""
    return [dataset for dataset, check in schedule_checks(name, checks, root).items() if check["short"]]


def schedule_check_lines(name, checks=None, root=REPO) -> List[str]:
    """Where a schedule check ran at one of the sweep's data sets (the same runs at twice the
    grid's iterations): what doubling gained there, and whether that data set's row compares
    runs that had not finished learning."""
    found = [f"- `{dataset}`: {format_gains(check['gains'])}"
             + ("; its row compares runs short of where they end" if check["short"] else "")
             + f" (`{check['source']}`)"
             for dataset, check in schedule_checks(name, checks, root).items()]
    if not found:
        return []
    return [f"The schedule checked at a data set: the same runs at twice the {GRIDS[name].iterations} iterations, "
            f"the AP gained (converged when under {CONVERGED_GAIN} on average over the seeds):", "", *found, ""]


def plot_sweep(name, results, path, seeds=None):
    """AP(loss) - AP(balanced CE) against R (log axis) for each compared loss, error bars from
    the seeds' spread."""
    plt = pyplot()
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
    short = short_schedule_datasets(name)
    for p in points:
        ax.annotate(p["dataset"].replace("retina_", "") + ("*" if p["dataset"] in short else ""), (p["R"], 0),
                    fontsize=6, textcoords="offset points", xytext=(2, -10))
    if short:  # a difference between runs still learning is not where the losses end
        ax.plot([], [], " ", label=f"*: twice the {GRIDS[name].iterations} iterations gained {CONVERGED_GAIN} AP or more")
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xscale("log")
    save_figure(fig, ax, path, GRIDS[name].title, "R: negative (anchor, class) pairs per positive pair",
                f"AP difference to {REFERENCE_LOSS} (measured here)")
    plt.close(fig)
    return path


def constant_rate_windows(curve, first_step):
    """(mean AP of a run's evaluations over the next-to-last quarter of the iterations before
    `first_step`, the learning rate's first drop; the mean over the last quarter), None for a
    window without evaluations. Their difference says how much the run was still climbing at
    the constant rate (near 0: it had levelled off)."""
    window = first_step // 4

    def mean_ap(start, end):
        aps = [curve_ap(ap) for iteration, ap in curve if start <= iteration < end]
        return sum(aps) / len(aps) if aps else None

    return mean_ap(first_step - 2 * window, first_step - window), mean_ap(first_step - window, first_step)


def levelled_table(name, results, out_dir, seeds=None) -> List[str]:
    """Per cell of a sweep: whether its runs had levelled off at the constant learning rate
    (constant_rate_windows: the last quarter's mean minus the one before, each seed and the
    mean) and what the rate's steps added after it (the final AP minus the last quarter's mean).
    The schedule was measured on one data set; this says whether it holds at the others."""
    lines = ["Levelled off before the learning rate dropped? AP gained over the last quarter of the "
             "iterations at the constant rate (the mean of its evaluations minus that of the quarter "
             "before), each seed and the mean; and what the rate's steps added after it (the final AP "
             "minus the last quarter's mean). -: a run not finished, without evaluations in both "
             "windows, or without its config.yaml to read the steps from.\n",
             "| cell | first step | AP gained in the last quarter at the constant rate, each seed | mean | AP added by the steps, mean |",
             "|---|---|---|---|---|"]
    for cell in GRIDS[name].cells:
        gains, added, steps = [], [], set()
        for run in cell.seeded(seeds):
            result = results.get(run.key)
            config_file = os.path.join(cell_dir(run, out_dir), "config.yaml")
            if result is None or result.status != "ok" or not result.curve or not os.path.isfile(config_file):
                gains.append(None)
                continue
            config = saved_config(config_file)
            # No step: the whole run is at the constant rate.
            first_step = min(config.get("SOLVER.STEPS") or [config.get("SOLVER.MAX_ITER") or 0])
            early, late = constant_rate_windows(result.curve, first_step) if first_step > 0 else (None, None)
            if early is None or late is None:
                gains.append(None)
                continue
            steps.add(first_step)
            gains.append(late - early)
            added.append(result.metrics["AP"] - late)
        measured = [g for g in gains if g is not None]
        if not measured:
            continue
        each = ", ".join("-" if g is None else f"{g:+.1f}" for g in gains)
        lines.append(f"| {cell.label} | {', '.join(map(str, sorted(steps)))} | {each} | "
                     f"{sum(measured) / len(measured):+.1f} | {sum(added) / len(added):+.1f} |")
    return lines + [""] if len(lines) > 3 else []
