#!/usr/bin/env python
"""
Box AP at each IoU threshold (0.50, 0.55, ..., 0.95) of training runs' last evaluation, from
the detections it saved: where AP50 is saturated, whether a difference in AP is in the scores
or in the boxes' precision. A second table separates the two: the share of objects that have a
box at IoU 0.5, 0.75 and 0.9, against the share whose highest-scoring box reaches it
(retina_plugin.evaluation.first_ranked_localisation).

    python tools/ap_by_iou.py output/sparse [output/other ...] [--output table.md]

Each run directory holds the config.yaml train_net.py wrote and inference/instances_predictions.pth,
which COCOEvaluator saves at each evaluation (the last one is the final model's; the table
gives the iteration metrics.json logged with it). The detections are evaluated again on the config's DATASETS.TEST[0] with its TEST.COCO_EVAL_ENGINE; nothing
is trained or inferred. Prints the markdown tables, one row per run, and writes them to --output.

--score-above S keeps only the detections scoring above S: the AP the same weights give at the
score threshold S, for a run evaluated at a lower one (Sampling-Free's threshold, the prior),
without its weights (exact but for tied scores: retina_plugin.saved_detections).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import retina_plugin  # noqa: E402,F401  (registers the built-in data sets)
import torch  # noqa: E402
from detectron2.data import DatasetCatalog  # noqa: E402

from retina_plugin.ablations.run_dir import read_metrics, summarize_metrics  # noqa: E402
from retina_plugin.analysis import describe_run  # noqa: E402
from retina_plugin.config import get_retina_cfg  # noqa: E402
from retina_plugin.evaluation import first_ranked_localisation  # noqa: E402
from retina_plugin.sampling_free import inference_score_thresh  # noqa: E402
from retina_plugin.saved_detections import detections_scoring_above, evaluate_saved  # noqa: E402

PREDICTIONS = os.path.join("inference", "instances_predictions.pth")


def last_evaluation_iteration(run_dir):
    """The iteration metrics.json logged with the run's last bbox AP, else the last point of
    the curve the ablation runner kept in result.json, else None."""
    curve = summarize_metrics(read_metrics(run_dir))[1]
    if not curve and os.path.isfile(os.path.join(run_dir, "result.json")):
        with open(os.path.join(run_dir, "result.json")) as f:
            curve = json.load(f).get("curve") or []
    return curve[-1][0] if curve else None


def evaluate_run(run_dir, score_above=None):
    """(cfg, {IoU threshold: AP}, first_ranked_localisation's dict) of a run directory's last
    evaluation; of its detections scoring above `score_above` only, if given."""
    config_file = os.path.join(run_dir, "config.yaml")
    predictions_file = os.path.join(run_dir, PREDICTIONS)
    for path in (config_file, predictions_file):
        if not os.path.isfile(path):
            raise SystemExit(f"{run_dir}: no {os.path.relpath(path, run_dir)}. Give the OUTPUT_DIR of a "
                             "train_net.py run that evaluated (TEST.EVAL_PERIOD or its final evaluation).")
    cfg = get_retina_cfg(config_file, [])
    if not cfg.DATASETS.TEST:
        raise SystemExit(f"{config_file}: DATASETS.TEST is empty; the run was not evaluated on a data set.")
    # Plain lists and dicts: COCOEvaluator's own format, loaded without running code.
    predictions = torch.load(predictions_file, map_location="cpu", weights_only=True)
    if score_above is not None:
        evaluated_at = inference_score_thresh(cfg)
        if score_above < evaluated_at:
            raise SystemExit(f"{run_dir}: evaluated at score threshold {evaluated_at:g}, so its saved detections "
                             f"hold none scoring at or below it: --score-above {score_above:g} needs the weights "
                             "(train_net.py --eval-only MODEL.RETINANET.SCORE_THRESH_TEST ...).")
        try:
            predictions = detections_scoring_above(predictions, score_above, cfg.TEST.DETECTIONS_PER_IMAGE)
        except ValueError as e:
            raise SystemExit(f"{run_dir}: {e}")
    # Before evaluating, so that the built-in set exists; its class ids as the detections' own.
    localisation = first_ranked_localisation(DatasetCatalog.get(cfg.DATASETS.TEST[0]), predictions)
    try:
        return cfg, evaluate_saved(cfg, predictions), localisation
    except ValueError as e:
        raise SystemExit(f"{run_dir}: {e}")


def format_table(rows):
    """rows: [(name, iteration evaluated or None, {IoU threshold: AP})] as a markdown table,
    AP (their mean) first."""
    thresholds = list(rows[0][2])
    header = "| run | evaluated at | AP | " + " | ".join(f"AP{round(t * 100)}" for t in thresholds) + " |"
    lines = [header, "|" + "---|" * (len(thresholds) + 3)]
    for name, iteration, ap in rows:
        mean = sum(ap.values()) / len(ap)
        evaluated = "-" if iteration is None else str(iteration)
        lines.append(f"| {name} | {evaluated} | {mean:.1f} | " + " | ".join(f"{ap[t]:.1f}" for t in thresholds) + " |")
    return "\n".join(lines)


def format_localisation_table(rows):
    """rows: [(name, first_ranked_localisation's dict)] as a markdown table."""
    thresholds = list(rows[0][1]["best"])
    at = " / ".join(f"{t:g}" for t in thresholds)
    lines = [f"| run | objects | objects with a box at IoU {at} (%) | objects whose highest-scoring box is at IoU {at} (%) "
             "| mean IoU: best box / highest-scoring box | rank correlation of score and IoU, highest-scoring boxes at IoU >= 0.5 |",
             "|---|---|---|---|---|---|"]
    for name, found in rows:
        best = " / ".join(f"{found['best'][t]:.1f}" for t in thresholds)
        first = " / ".join(f"{found['first'][t]:.1f}" for t in thresholds)
        lines.append(f"| {name} | {found['objects']} | {best} | {first} | {found['mean_best']:.3f} / {found['mean_first']:.3f} "
                     f"| {found['score_iou_rank_correlation']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", metavar="OUTPUT_DIR")
    parser.add_argument("--output", default=None, help="write the table to this markdown file too")
    parser.add_argument("--score-above", type=float, default=None, metavar="S",
                        help="evaluate only the detections scoring above S (a threshold above the run's own)")
    args = parser.parse_args(argv)
    rows, localisation = [], []
    for run_dir in args.run_dirs:
        cfg, ap, found = evaluate_run(run_dir, args.score_above)
        rows.append((describe_run(cfg), last_evaluation_iteration(run_dir), ap))
        localisation.append((describe_run(cfg), found))
    table = (format_table(rows) + "\n\nThe boxes apart from their ranking (each detection assigned to the object "
             "of its class it overlaps most; retina_plugin.evaluation.first_ranked_localisation):\n\n"
             + format_localisation_table(localisation))
    print(table)
    if args.output:
        with open(args.output, "w") as f:
            command = " ".join(args.run_dirs) + ("" if args.score_above is None else f" --score-above {args.score_above:g}")
            f.write(f"Box AP at each IoU threshold, by: `python tools/ap_by_iou.py {command}`\n\n"
                    + table + "\n")


if __name__ == "__main__":
    main()
