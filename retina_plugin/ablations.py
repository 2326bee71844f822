"""
The paper's ablations as named grids of config overrides, run through train_net.py, one
process per cell, and reported as a markdown table, a CSV and PNG plots beside the paper's
numbers. The command line is tools/run_ablations.py.

A cell's output directory is named after its overrides, so a cell shared by two grids (FL with
gamma 2, alpha 0.25 is in Table 1b and 1d) trains once, and a finished cell (its result.json
written) is never rerun: an interrupted grid continues where it stopped.
"""
import csv
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

RETINANET = "MODEL.RETINANET."
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# Table 1 of the paper: R-50-FPN (R-101 in 1d) trained and tested at 600 px on COCO minival.
PAPER_SOURCE = "the paper's Table 1 (COCO minival, R-50-FPN at 600 px; R-101 in Table 1d)"


@dataclass(frozen=True)
class Cell:
    """One training run of a grid: its label, its config overrides, the paper's AP for it."""

    label: str
    overrides: Tuple[Tuple[str, object], ...]
    paper_ap: Optional[float] = None
    params: Tuple[Tuple[str, float], ...] = ()  # what the plots put on their axes

    @property
    def key(self) -> str:
        """A directory name that says what the cell runs: the same overrides, the same name."""
        parts = []
        for name, value in sorted(self.overrides):
            short = name.replace(RETINANET, "").lower().replace(".", "_")
            parts.append(f"{short}={value}")
        return re.sub(r"[^A-Za-z0-9_.=,-]", "", "__".join(parts))

    def opts(self) -> List[str]:
        """The overrides as train_net.py's trailing KEY VALUE arguments."""
        return [str(x) for name, value in self.overrides for x in (name, value)]


@dataclass(frozen=True)
class Grid:
    title: str
    cells: Tuple[Cell, ...]
    plot: Optional[Tuple[str, str]] = None  # (x param, the param that tells series apart)
    note: str = ""


def focal(alpha, gamma, label=None, paper_ap=None, **more):
    alpha, gamma = float(alpha), float(gamma)  # yacs refuses an int for a float key
    overrides = {
        RETINANET + "CLS_LOSS_TYPE": "focal",
        RETINANET + "FOCAL_LOSS_ALPHA": alpha,
        RETINANET + "FOCAL_LOSS_GAMMA": gamma,
        RETINANET + "PRIOR_PROB": 0.01,
        **{RETINANET + k: v for k, v in more.items()},
    }
    name = "CE" if gamma == 0 else "FL"
    label = label or f"{name} gamma {gamma:g}, alpha {alpha:g}"
    return Cell(label, tuple(overrides.items()), paper_ap, (("gamma", gamma), ("alpha", alpha)))


def focal_cells(rows):
    """Cells of the focal loss from (gamma, alpha, the paper's AP) rows."""
    return tuple(focal(alpha, gamma, paper_ap=ap) for gamma, alpha, ap in rows)


def ohem(label, paper_ap, positive_fraction):
    """The paper's OHEM cells: batch 128 per image after NMS at 0.5."""
    return _loss(
        "ohem", label, paper_ap,
        **{"OHEM.BATCH_SIZE_PER_IMAGE": 128, "OHEM.NMS_THRESH": 0.5,
           "OHEM.POSITIVE_FRACTION": positive_fraction},
    )


def _loss(loss_type, label, paper_ap=None, **keys):
    overrides = {RETINANET + "CLS_LOSS_TYPE": loss_type, RETINANET + "PRIOR_PROB": 0.01}
    overrides.update({RETINANET + k: v for k, v in keys.items()})
    return Cell(label, tuple(overrides.items()), paper_ap)


GRIDS: Dict[str, Grid] = {
    "init": Grid(
        "Initialisation: CE with and without the prior on the class bias",
        tuple(
            # Without gradient clipping, as the paper: clipping would hide a divergence.
            Cell(c.label, c.overrides + (("SOLVER.CLIP_GRADIENTS.ENABLED", False),))
            for c in (
                focal(-1, 0, "CE, standard init (bias 0: pi = 0.5)", PRIOR_PROB=0.5),
                focal(-1, 0, "CE, prior init (pi = 0.01)"),
            )
        ),
        note="The paper: CE with the standard initialisation diverges; with pi = 0.01 it "
        "trains. Both cells without gradient clipping, as the paper.",
    ),
    "headline": Grid(
        "CE, balanced CE and focal loss: the paper's main comparison",
        (
            focal(-1, 0, "CE"),
            focal(0.75, 0, "balanced CE, alpha 0.75", 31.1),
            focal(0.25, 2, "FL gamma 2, alpha 0.25", 34.0),
        ),
        note="The paper: FL beats the best balanced CE by about 3 AP (Table 1a/b).",
    ),
    "table1a": Grid(
        "Table 1a: balanced CE, alpha",
        focal_cells(
            (0, alpha, ap)
            for alpha, ap in (
                (0.10, 0.0), (0.25, 10.8), (0.50, 30.2), (0.75, 31.1),
                (0.90, 30.8), (0.99, 28.7), (0.999, 25.1),
            )
        ),
        plot=("alpha", "gamma"),
    ),
    "table1b": Grid(
        "Table 1b: focal loss, gamma and alpha",
        focal_cells(
            (
                (0, 0.75, 31.1), (0.1, 0.75, 31.4), (0.2, 0.75, 31.9), (0.5, 0.50, 32.9),
                (1, 0.25, 33.7), (2, 0.25, 34.0), (5, 0.25, 32.2),
            )
        ),
        plot=("gamma", "alpha"),
    ),
    "interaction": Grid(
        "gamma and alpha together: CE and FL (gamma 2) at three alphas",
        focal_cells(
            (
                (0, 0.25, 10.8), (0, 0.5, 30.2), (0, 0.75, 31.1),
                (2, 0.25, 34.0), (2, 0.5, None), (2, 0.75, None),
            )
        ),
        plot=("alpha", "gamma"),
        note="The paper: gamma and alpha interact; the best alpha is lower with a higher gamma "
        "(0.75 for CE, 0.25 for FL with gamma 2).",
    ),
    "table1d": Grid(
        "Table 1d: OHEM against focal loss",
        (
            ohem("OHEM, nms 0.5, batch 128", 32.8, -1.0),
            ohem("OHEM 1:3, nms 0.5, batch 128", 31.1, 0.25),
            focal(0.25, 2, "FL gamma 2, alpha 0.25", 36.0),
        ),
        note="The paper's Table 1d is R-101 (FL 36.0); its best OHEM is 32.8, OHEM 1:3 31.1.",
    ),
    "variants": Grid(
        "FL* (appendix A) and softmax focal loss against FL",
        (
            _loss("focal_star", "FL*, gamma 2, beta 1", 33.8,
                  **{"FOCAL_LOSS_ALPHA": 0.25, "FOCAL_STAR.GAMMA": 2.0, "FOCAL_STAR.BETA": 1.0}),
            _loss("focal_star", "FL*, gamma 4, beta 0", 33.9,
                  **{"FOCAL_LOSS_ALPHA": 0.25, "FOCAL_STAR.GAMMA": 4.0, "FOCAL_STAR.BETA": 0.0}),
            _loss("softmax_focal", "softmax FL, gamma 2, alpha 0.25", None,
                  **{"FOCAL_LOSS_ALPHA": 0.25, "FOCAL_LOSS_GAMMA": 2.0}),
            focal(0.25, 2, "FL gamma 2, alpha 0.25", 34.0),
        ),
        note="The paper reports FL* in its appendix A (33.8 and 33.9 AP against FL's 34.0) "
        "and no softmax-FL number.",
    ),
}


@dataclass
class Result:
    status: str  # "ok", "diverged" or "failed"
    metrics: Dict[str, float] = field(default_factory=dict)
    iteration: Optional[int] = None  # where a diverged run stopped
    log: str = ""
    note: str = ""

    def __post_init__(self):
        values = [self.metrics.get(m, float("nan")) for m in METRICS]
        if self.status == "ok" and all(v != v for v in values):
            # COCOEvaluator reports NaN for everything when a model detects nothing; against
            # ground truth that is an AP of 0 (the paper's 0.0 for CE at alpha 0.1).
            self.metrics = {m: (float("nan") if m == "APl" else 0.0) for m in METRICS}
            self.note = "no detections"

    def describe(self) -> str:
        if self.status == "diverged":
            return f"diverged at iteration {self.iteration}"
        if self.status == "failed":
            return f"failed (see {self.log})"
        return "ok"


DIVERGED = re.compile(r"Loss became infinite or NaN at iteration=(\d+)")


def read_final_metrics(output_dir) -> Dict[str, float]:
    """The last evaluation's bbox metrics in an OUTPUT_DIR's metrics.json, as {AP: ...}."""
    path = os.path.join(output_dir, "metrics.json")
    found = {}
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                record = json.loads(line) if line else {}
                if "bbox/AP" in record:
                    found = {m: record.get(f"bbox/{m}", float("nan")) for m in METRICS}
    return found


def run_cell(cell: Cell, out_dir, base_args: List[str], extra_opts: List[str], threads=None):
    """Train and evaluate one cell with train_net.py (unless done before); return its Result."""
    cell_dir = os.path.join(out_dir, "cells", cell.key)
    result_file = os.path.join(cell_dir, "result.json")
    done = finished_result(cell, out_dir)
    if done is not None:
        return done
    os.makedirs(cell_dir, exist_ok=True)
    log_file = os.path.join(cell_dir, "run.log")
    train_net = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train_net.py")
    cmd = [sys.executable, train_net, *base_args, "--resume", "OUTPUT_DIR", cell_dir]
    cmd += cell.opts() + list(extra_opts)
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with open(log_file, "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        returncode = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    with open(log_file) as f:
        text = f.read()
    diverged = DIVERGED.search(text)
    metrics = read_final_metrics(cell_dir)
    if returncode == 0 and metrics:
        result = Result("ok", metrics)
    elif diverged:
        result = Result("diverged", iteration=int(diverged.group(1)))
    else:
        # Not written to result.json: a failure (a killed process, a bad path) is rerun.
        return Result("failed", log=log_file)
    with open(result_file, "w") as f:
        json.dump(result.__dict__, f)
    return result


def finished_result(cell: Cell, out_dir) -> Optional[Result]:
    """The Result of a cell finished before, or None."""
    result_file = os.path.join(out_dir, "cells", cell.key, "result.json")
    if not os.path.isfile(result_file):
        return None
    with open(result_file) as f:
        return Result(**json.load(f))


def run_grids(names, out_dir, base_args, extra_opts=(), jobs=1, log=print, dry=False):
    """
    Run the cells of the named grids (each distinct cell once, finished ones not again);
    return {cell key: Result}. With `dry`, only collect the finished cells' results.
    """
    cells = {}
    for name in names:
        for cell in GRIDS[name].cells:
            cells.setdefault(cell.key, cell)
    if dry:
        found = {key: finished_result(cell, out_dir) for key, cell in cells.items()}
        return {key: result for key, result in found.items() if result is not None}
    threads = max(1, (os.cpu_count() or 1) // jobs)

    def one(cell):
        result = run_cell(cell, out_dir, base_args, list(extra_opts), threads if jobs > 1 else None)
        log(f"{cell.label}: {result.describe()} {format_ap(result)}")
        return cell.key, result

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return dict(pool.map(one, cells.values()))


def format_ap(result: Optional[Result], metric="AP") -> str:
    if result is None:
        return "not run"
    if result.status != "ok":
        return result.describe()
    value = result.metrics.get(metric, float("nan"))
    text = "-" if value != value else f"{value:.1f}"
    return f"{text} ({result.note})" if result.note and metric == "AP" else text


def write_reports(names, results, out_dir, title_note=""):
    """results.md, results.csv and one PNG per plotted grid in out_dir; return their paths."""
    rows, md = [], [f"# Ablations\n\n{title_note}".rstrip() + "\n"]
    for name in names:
        grid = GRIDS[name]
        md.append(f"## {name}: {grid.title}\n")
        if grid.note:
            md.append(grid.note + "\n")
        md.append("| cell | AP | AP50 | AP75 | APs | APm | APl | paper's AP |")
        md.append("|---|---|---|---|---|---|---|---|")
        for cell in grid.cells:
            result = results.get(cell.key)
            ours = [format_ap(result, m) for m in METRICS]
            if result is not None and result.status != "ok":
                ours = [ours[0]] + [""] * (len(METRICS) - 1)
            paper = "-" if cell.paper_ap is None else f"{cell.paper_ap:.1f}"
            md.append(f"| {cell.label} | " + " | ".join(ours) + f" | {paper} |")
            row = {"grid": name, "cell": cell.label, "dir": cell.key}
            row["status"] = "not run" if result is None else result.describe()
            for metric in METRICS:
                ok = result is not None and result.status == "ok"
                row[metric] = result.metrics.get(metric, "") if ok else ""
            row["paper_AP"] = "" if cell.paper_ap is None else cell.paper_ap
            rows.append(row)
        md.append("")
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
        if GRIDS[name].plot:
            paths[name] = plot_grid(name, results, os.path.join(out_dir, f"{name}.png"))
    return paths


def plot_series(name, results):
    """{"ours"|"paper": [(x, y, series value)]} of a plotted grid; diverged or missing cells left out."""
    x_param, series_param = GRIDS[name].plot
    points = {"ours": [], "paper": []}
    for cell in GRIDS[name].cells:
        params = dict(cell.params)
        result = results.get(cell.key)
        if result is not None and result.status == "ok":
            points["ours"].append((params[x_param], result.metrics["AP"], params[series_param]))
        if cell.paper_ap is not None:
            points["paper"].append((params[x_param], cell.paper_ap, params[series_param]))
    return points


def plot_grid(name, results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_param, series_param = GRIDS[name].plot
    points = plot_series(name, results)
    fig, ax = plt.subplots(figsize=(6, 4))
    series = sorted({p[2] for source in points.values() for p in source})
    colors = {value: f"C{i}" for i, value in enumerate(series)}
    for source, style in (("ours", "o-"), ("paper", "s--")):
        for value in series:
            pts = sorted(p for p in points[source] if p[2] == value)
            if pts:
                who = "measured here" if source == "ours" else "the paper (COCO, R-50)"
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=colors[value],
                        label=f"{who}, {series_param} {value:g}")
    if x_param == "alpha":
        ax.set_xscale("logit")
    ax.set_xlabel(x_param)
    ax.set_ylabel("bbox AP")
    ax.set_title(GRIDS[name].title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
