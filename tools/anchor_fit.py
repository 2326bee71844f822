#!/usr/bin/env python
"""
Before NMS: how well the boxes of the anchors trained on each object fit it, and whether the
classifier scores the better-fitting ones higher (retina_plugin.analysis.anchor_box_fit).
tools/ap_by_iou.py measures the detections after NMS; this says where a difference there
comes from: every anchor's box (the features and the box branch), or the scores that pick
which box NMS keeps.

    python tools/anchor_fit.py output/sparse [output/other ...] [--weights-name model_final.pth]
        [--max-images 500] [--output table.md]

Each run directory holds the config.yaml train_net.py wrote and a checkpoint (--weights-name).
The model runs on the config's DATASETS.TEST[0] at test-time size; each anchor is matched to
the objects as in training (MODEL.RETINANET.IOU_THRESHOLDS), and for each object its matched
anchors' predicted boxes are compared with it. Prints a markdown table, one row per run.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from retina_plugin.analysis import anchor_box_fit, describe_run, trained_model_and_batches  # noqa: E402
from retina_plugin.config import get_retina_cfg  # noqa: E402


def fit_of_run(run_dir, weights_name, max_images):
    """(cfg, anchor_box_fit's dict) of a run directory's checkpoint."""
    config_file, weights = os.path.join(run_dir, "config.yaml"), os.path.join(run_dir, weights_name)
    for path in (config_file, weights):
        if not os.path.isfile(path):
            raise SystemExit(f"{run_dir}: no {os.path.relpath(path, run_dir)}. Give the OUTPUT_DIR of a "
                             "train_net.py run that finished (or --weights-name of a checkpoint it saved).")
    cfg = get_retina_cfg(config_file, [])
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    if not cfg.DATASETS.TEST:
        raise SystemExit(f"{config_file}: DATASETS.TEST is empty: no data set to measure on.")
    model, batches = trained_model_and_batches(cfg, weights, cfg.DATASETS.TEST[0], max_images)
    return cfg, anchor_box_fit(model, batches)


def format_table(rows):
    """rows: [(name, anchor_box_fit's dict)] as a markdown table."""
    thresholds = list(rows[0][1]["anchors_at"])
    at = " / ".join(f"{t:g}" for t in thresholds)
    lines = [f"| run | objects | matched anchors | anchors' boxes at IoU {at} (%) | mean IoU of anchors' boxes "
             f"| objects whose best-fitting anchor is at IoU {at} (%) | objects whose highest-scoring anchor is at IoU {at} (%) "
             "| mean IoU: best / highest-scoring anchor | rank correlation of score and IoU within an object |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, fit in rows:
        shares = (" / ".join(f"{fit[key][t]:.1f}" for t in thresholds) for key in ("anchors_at", "best_at", "first_at"))
        anchors_at, best_at, first_at = shares
        lines.append(f"| {name} | {fit['objects']} | {fit['anchors']} | {anchors_at} | {fit['mean_anchor_iou']:.3f} "
                     f"| {best_at} | {first_at} | {fit['mean_best']:.3f} / {fit['mean_first']:.3f} "
                     f"| {fit['within_object_rank_correlation']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", metavar="OUTPUT_DIR")
    parser.add_argument("--weights-name", default="model_final.pth", help="the checkpoint in each run directory")
    parser.add_argument("--max-images", type=int, default=10**9, help="measure on the first N test images")
    parser.add_argument("--output", help="write the table to this markdown file too")
    args = parser.parse_args(argv)
    if args.max_images <= 0:
        parser.error(f"--max-images {args.max_images}: give a positive number")
    rows = []
    for run_dir in args.run_dirs:
        cfg, fit = fit_of_run(run_dir, args.weights_name, args.max_images)
        rows.append((describe_run(cfg), fit))
    table = format_table(rows)
    print(table)
    if args.output:
        command = " ".join(argv if argv is not None else sys.argv[1:])
        with open(args.output, "w") as f:
            f.write(f"Before NMS, by: `python tools/anchor_fit.py {command}`\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
