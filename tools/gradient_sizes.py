#!/usr/bin/env python
"""
How large a classification gradient each loss of the headline sends at the same weights, and
how much of it comes from the background (retina_plugin.gradients): the Sampling-Free paper's
account of the imbalance's harm, and what gradient clipping bounds.

    python tools/gradient_sizes.py --config-file configs/sparse.yaml \\
        --weights start <run>/model_0000499.pth ... [--batches 8] [--output gradients.md]

For each weights and each loss of the headline grid (CE, balanced CE, FL, Sampling-Free CE),
the config with that loss's keys is built and loaded with the weights: `start` is where each
loss's training starts (MODEL.WEIGHTS, the pretrained backbone, with the loss's own head
initialisation); a checkpoint gives every loss the same trained weights (which run trained them
is in the table). The gradients are measured, without updating anything, on the first
--batches batches of SOLVER.IMS_PER_BATCH images of DATASETS.TRAIN[0] at test-time size (no
flip), the same images for every row.
"""
import argparse
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from retina_plugin.ablations.grids import HEADLINE_LOSSES  # noqa: E402
from retina_plugin.analysis import annotated_batches, describe_run  # noqa: E402
from retina_plugin.config import get_retina_cfg  # noqa: E402
from retina_plugin.gradients import mean_gradient_sizes  # noqa: E402

START = "start"

LEGEND = (
    "Norms, averaged over the batches. dL/dz: the classification loss's gradient (as training computes it, "
    "normaliser or guided scaling included) at the logits of the background anchors' and of the object "
    "anchors' (anchor, class) pairs. Classification gradient: each of those parts carried back to all "
    "trainable parameters, and their sum. The last two columns: each parameter's gradient of the whole loss "
    "(classification and box regression), what gradient clipping (SOLVER.CLIP_GRADIENTS, per parameter) bounds."
)


def model_at(cfg, weights):
    """The config's model with `weights`: START loads MODEL.WEIGHTS as training starts (the
    head keeps its initialisation, seeded with SEED, or 0 if negative); a checkpoint must fill
    every weight."""
    from detectron2.modeling import build_model

    from retina_plugin.checkpoint import SafeDetectionCheckpointer

    from detectron2.utils.env import seed_all_rng

    # The head's initial weights are random: drawn as a run of the config's SEED draws them.
    seed_all_rng(cfg.SEED if cfg.SEED >= 0 else 0)
    model = build_model(cfg)
    checkpointer = SafeDetectionCheckpointer(model)
    if weights == START:
        if cfg.MODEL.WEIGHTS:
            checkpointer.load(cfg.MODEL.WEIGHTS)
    else:
        checkpointer.load(weights)
        checkpointer.require_complete_load(weights)
    return model


def describe_weights(weights):
    """Which weights: START, or the iterations and the run (its config.yaml, else its folder)."""
    if weights == START:
        return "start (each loss's own initialisation)"
    run_dir = os.path.dirname(os.path.abspath(weights))
    config_file = os.path.join(run_dir, "config.yaml")
    run = describe_run(get_retina_cfg(config_file)) if os.path.isfile(config_file) else os.path.basename(run_dir)
    # train_net.py names a periodic checkpoint after its last iteration, counted from 0.
    numbered = re.fullmatch(r"model_(\d+)\.pth", os.path.basename(weights))
    return f"{f'after {int(numbered.group(1)) + 1} iterations' if numbered else os.path.basename(weights)} of {run}"


def format_table(rows, clip_value):
    lines = [
        "| weights | loss | loss_cls | loss_box_reg | dL/dz: background / objects | classification gradient: "
        "background / objects / both | background / (background + objects) | largest parameter's gradient "
        f"(whole loss) | parameters over {clip_value:g} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for weights, loss, s in rows:
        share = s["params_background"] / max(s["params_background"] + s["params_objects"], 1e-30)
        lines.append(
            f"| {weights} | {loss} | {s['loss_cls']:.3g} | {s['loss_box_reg']:.3g} "
            f"| {s['logits_background']:.3g} / {s['logits_objects']:.3g} "
            f"| {s['params_background']:.3g} / {s['params_objects']:.3g} / {s['params_cls']:.3g} "
            f"| {share:.0%} | {s['largest_param']:.3g} | {s['params_over_clip']:.1f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", nargs="+", default=[START],
                        help=f"checkpoints to measure at, or '{START}' (default)")
    parser.add_argument("--batches", type=int, default=8, help="average over this many training batches")
    parser.add_argument("--output", help="write the table to this markdown file too")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    if args.batches <= 0:
        parser.error(f"--batches {args.batches}: give a positive number")
    for weights in args.weights:
        if weights != START and not os.path.isfile(weights):
            parser.error(f"--weights {weights}: no such file; give a checkpoint train_net.py saved, or '{START}'")
    rows = []
    for weights in args.weights:
        described = describe_weights(weights)
        for loss in HEADLINE_LOSSES:
            cfg = get_retina_cfg(args.config_file, args.opts + loss.opts())
            if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
                cfg.MODEL.DEVICE = "cpu"
            if not cfg.DATASETS.TRAIN:
                parser.error(f"{args.config_file}: DATASETS.TRAIN is empty: name the training set to measure on")
            model = model_at(cfg, weights)
            batches = annotated_batches(cfg, cfg.DATASETS.TRAIN[0], args.batches * cfg.SOLVER.IMS_PER_BATCH,
                                        batch_size=cfg.SOLVER.IMS_PER_BATCH)
            sizes = mean_gradient_sizes(model, batches, cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE)
            rows.append((described, loss.label, sizes))
            print(format_table(rows[-1:], cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE).splitlines()[-1], flush=True)
    table = format_table(rows, cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE)
    print(table)
    if args.output:
        command = " ".join(argv if argv is not None else sys.argv[1:])
        with open(args.output, "w") as f:
            f.write(f"By: `python tools/gradient_sizes.py {command}`\n\n{LEGEND}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
