#!/usr/bin/env python
"""
A training run's metrics.json (detectron2's JSONWriter) as PNG curves.

    python tools/plot_metrics.py output/quickstart [--out output/quickstart/plots]

Writes losses.png (loss_cls, loss_box_reg, total_loss), lr.png, focal.png (positive anchors
per image, the loss normaliser, the background's share of the classification loss) and, when
the run evaluated, ap.png (bbox AP, AP50, AP75 at each evaluation).
"""
import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# file: (y label, keys, one panel per key: for quantities of different scales)
PLOTS = {
    "losses.png": ("loss", ["loss_cls", "loss_box_reg", "total_loss"], False),
    "lr.png": ("learning rate", ["lr"], False),
    "focal.png": (None, ["num_pos_anchors", "loss_normalizer", "cls_loss_background_share"], True),
    "ap.png": ("bbox AP", ["bbox/AP", "bbox/AP50", "bbox/AP75"], False),
}


def read_series(metrics_file):
    """{key: ([iterations], [values])} from a metrics.json, one JSON object per line."""
    series = {}
    with open(metrics_file) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            record = json.loads(line)
            iteration = record.get("iteration")
            for key, value in record.items():
                if key != "iteration" and isinstance(value, (int, float)):
                    xs, ys = series.setdefault(key, ([], []))
                    xs.append(iteration)
                    ys.append(value)
    return series


def plot_run(run_dir, out_dir=None):
    """Write the PNGs of PLOTS that have data; return {file name: {key: (xs, ys)}} plotted."""
    metrics_file = os.path.join(run_dir, "metrics.json")
    if not os.path.isfile(metrics_file):
        raise FileNotFoundError(f"{metrics_file} does not exist: give the OUTPUT_DIR of a run.")
    series = read_series(metrics_file)
    out_dir = out_dir or os.path.join(run_dir, "plots")
    os.makedirs(out_dir, exist_ok=True)
    plotted = {}
    for file_name, (ylabel, keys, panel_per_key) in PLOTS.items():
        present = {k: series[k] for k in keys if k in series}
        if not present:
            continue
        panels = len(present) if panel_per_key else 1
        figure, axes = plt.subplots(panels, 1, figsize=(7, 2.6 * max(panels, 1.6)), squeeze=False)
        for index, (key, (xs, ys)) in enumerate(present.items()):
            ax = axes[index if panel_per_key else 0][0]
            ax.plot(xs, ys, marker="o" if len(xs) < 20 else None, label=key)
            ax.set_xlabel("iteration")
            ax.set_ylabel(key if panel_per_key else ylabel)
            ax.grid(alpha=0.3)
            ax.legend()
        figure.tight_layout()
        figure.savefig(os.path.join(out_dir, file_name), dpi=100)
        plt.close(figure)
        plotted[file_name] = present
    return plotted


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run's OUTPUT_DIR, holding metrics.json")
    parser.add_argument("--out", help="where to write the PNGs (default RUN_DIR/plots)")
    args = parser.parse_args()
    plotted = plot_run(args.run_dir, args.out)
    print("Wrote " + ", ".join(plotted) + f" to {os.path.abspath(args.out or os.path.join(args.run_dir, 'plots'))}")


if __name__ == "__main__":
    main()
