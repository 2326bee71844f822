#!/usr/bin/env python
"""
How much of training runs' AP hangs on tied scores, from the detections their last evaluation
saved; nothing is trained or inferred. A float32 sigmoid rounds every logit above about 16.6 to
a score of exactly 1, so a confident classifier (CE, Sampling-Free's guided scaling) saves many
detections at the same score, and which of them NMS keeps and how AP ranks them is the order
they came in, not the model's. Per run: the detections that share their score, the AP as
saved, and the AP with the ties ordered by how well each box fits its object, best first
(retina_plugin.saved_detections.ties_ordered_by_fit): about the most that ranking them by the
model's logits (MODEL.RETINANET.SCORE_DTYPE_TEST float64, which needs the weights) could add.

    python tools/tied_scores.py OUTPUT_DIR [OUTPUT_DIR ...] [--output table.md]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import retina_plugin  # noqa: E402,F401  (registers the built-in data sets)
import torch  # noqa: E402
from detectron2.data import DatasetCatalog  # noqa: E402

from retina_plugin.analysis import describe_run  # noqa: E402
from retina_plugin.config import get_retina_cfg  # noqa: E402
from retina_plugin.saved_detections import evaluate_saved, tied_detections, ties_ordered_by_fit  # noqa: E402

PREDICTIONS = os.path.join("inference", "instances_predictions.pth")


def measure_run(run_dir):
    """(cfg, {"detections", "tied", "saved": (AP, AP90), "by_fit": (AP, AP90)})."""
    for name in ("config.yaml", PREDICTIONS):
        if not os.path.isfile(os.path.join(run_dir, name)):
            raise SystemExit(f"{run_dir}: no {name}. Give the OUTPUT_DIR of a train_net.py run that evaluated.")
    cfg = get_retina_cfg(os.path.join(run_dir, "config.yaml"), [])
    if not cfg.DATASETS.TEST:
        raise SystemExit(f"{run_dir}/config.yaml: DATASETS.TEST is empty; the run was not evaluated on a data set.")
    # Plain lists and dicts: COCOEvaluator's own format, loaded without running code.
    predictions = torch.load(os.path.join(run_dir, PREDICTIONS), map_location="cpu", weights_only=True)
    dataset_dicts = DatasetCatalog.get(cfg.DATASETS.TEST[0])

    def ap(preds):
        at = evaluate_saved(cfg, preds)
        return sum(at.values()) / len(at), at[0.9]

    return cfg, {"detections": sum(len(p["instances"]) for p in predictions), "tied": tied_detections(predictions),
                 "saved": ap(predictions), "by_fit": ap(ties_ordered_by_fit(dataset_dicts, predictions))}


def format_table(rows):
    lines = ["| run | detections | sharing their score | AP (AP90) as saved | AP (AP90), ties best-fitting first |",
             "|---|---|---|---|---|"]
    for name, f in rows:
        ap = lambda key: f"{f[key][0]:.2f} ({f[key][1]:.1f})"  # noqa: E731
        lines.append(f"| {name} | {f['detections']} | {f['tied']} | {ap('saved')} | {ap('by_fit')} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", metavar="OUTPUT_DIR")
    parser.add_argument("--output", default=None, help="write the table to this markdown file too")
    args = parser.parse_args(argv)
    rows = []
    for run_dir in args.run_dirs:
        try:
            cfg, found = measure_run(run_dir)
        except ValueError as e:
            print(f"{run_dir}: {e}; left out", flush=True)
            continue
        rows.append((describe_run(cfg), found))
        print(f"{describe_run(cfg)}: {found['tied']} of {found['detections']} detections tied", flush=True)
    table = format_table(rows)
    print(table)
    if args.output:
        with open(args.output, "w") as f:
            f.write(f"AP with tied scores ordered, by: `python tools/tied_scores.py {' '.join(args.run_dirs)}`\n\n"
                    + table + "\n")
    return rows


if __name__ == "__main__":
    main()
