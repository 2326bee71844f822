"""
Reports of grids' results: results.md (one row per cell: each seed's AP and their mean and
standard deviation, beside the paper's AP; the schedule check; the sweep's table, from
sweep_report.py), results.csv (one row per run) and the PNG plots (plots.py).
"""
import csv
import math
import os
from typing import List

from .grids import CONVERGED_GAIN, GRIDS, METRICS, PAPER_SOURCE
from .paired import paired_tables
from .plots import plot_curves, plot_grid
from .prefix import shared_prefix_run
from .result import format_ap
from .seeds import cell_runs, format_mean, summarize
from .sweep_report import levelled_table, plot_sweep, sweep_table


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
            md += levelled_table(name, results, out_dir, seeds)
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
