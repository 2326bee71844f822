#!/usr/bin/env python
"""
The paper's analysis figures as PNGs (the numbers: retina_plugin/analysis.py).

    python tools/plot_paper_figures.py fig1 --out docs/figure1.png
    python tools/plot_paper_figures.py fig4 --config-file configs/quickstart.yaml \
        --weights output/quickstart/model_final.pth --out docs/figure4.png [--max-images 100]

fig1: the focal loss against p_t for gamma in {0, 0.5, 1, 2, 5}.
fig4: cumulative distribution of the normalised focal loss, for gamma in {0, 0.5, 1, 2}, over
the positive and over the negative (anchor, class) samples of a trained checkpoint on the
config's first test data set (or --dataset-name), ground truth matched as in training.
Trailing KEY VALUE pairs override the config.
"""
import argparse
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from retina_plugin.analysis import (  # noqa: E402
    FIGURE1_GAMMAS,
    FIGURE4_GAMMAS,
    collect_p_t,
    cumulative_normalized_loss,
    loss_against_p_t,
    trained_model_and_batches,
)


def figure1(path):
    p_t = np.linspace(0.0, 1.0, 501)[1:]
    curves = loss_against_p_t(p_t, FIGURE1_GAMMAS)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for gamma, loss in curves.items():
        ax.plot(p_t, loss, label=f"gamma = {gamma:g}")
    ax.set_ylim(0, 5)
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability of ground truth class p_t")
    ax.set_ylabel("loss")
    ax.axvspan(0.6, 1.0, color="green", alpha=0.05)
    ax.text(0.62, 4.5, "well-classified examples", fontsize=8)
    ax.set_title("Focal loss -(1 - p_t)^gamma log(p_t) (the paper's Figure 1)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return curves


def figure4(samples, path, gammas=FIGURE4_GAMMAS):
    """Two panels, positives and negatives; returns {(kind, gamma): (fractions, cumulative)}."""
    curves = {}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, kind in zip(axes, ("positive", "negative")):
        for gamma in gammas:
            x, y = cumulative_normalized_loss(samples[kind], gamma)
            curves[(kind, gamma)] = (x, y)
            # Millions of samples: plot 2000 points of the curve, its end included.
            shown = np.unique(np.linspace(0, len(x) - 1, 2000).astype(int))
            ax.plot(x[shown], y[shown], label=f"gamma = {gamma:g}")
        ax.set_title(f"{kind} samples ({len(samples[kind]):,})")
        ax.set_xlabel("fraction of samples, lowest loss first")
        ax.set_ylabel("cumulative normalised loss")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left")
    fig.suptitle("Cumulative distribution of the normalised focal loss (the paper's Figure 4)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return curves


def load_samples(args):
    import torch

    from retina_plugin.config import get_retina_cfg

    cfg = get_retina_cfg(args.config_file, args.opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    dataset = args.dataset_name or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None)
    if dataset is None:
        raise SystemExit("No data set: give --dataset-name or set DATASETS.TEST in the config.")
    model, batches = trained_model_and_batches(cfg, args.weights, dataset, args.max_images)
    return collect_p_t(model, batches, negatives_per_image=args.negatives_per_image)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("figure", choices=["fig1", "fig4"])
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--config-file", help="fig4: the checkpoint's config")
    parser.add_argument("--weights", help="fig4: a trained checkpoint (.pth or .pkl)")
    parser.add_argument("--dataset-name", help="fig4: a registered data set (default: the config's first test set)")
    parser.add_argument("--max-images", type=int, default=100)
    parser.add_argument("--negatives-per-image", type=int, default=100_000)
    # Trailing KEY VALUE pairs: argparse's REMAINDER would also swallow the options after fig1.
    args, args.opts = parser.parse_known_args(argv)
    if len(args.opts) % 2 or any(o.startswith("--") for o in args.opts[::2]):
        parser.error(f"unrecognised arguments {args.opts}: config overrides are KEY VALUE pairs")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if args.figure == "fig1":
        figure1(args.out)
    else:
        if not args.config_file or not args.weights:
            parser.error("fig4 needs --config-file and --weights (a trained checkpoint)")
        samples = load_samples(args)
        curves = figure4(samples, args.out)
        for kind in ("positive", "negative"):
            # The paper's reading of the figure: the share of the loss the hardest 10% carry.
            shares = ", ".join(
                f"gamma {g:g}: {1 - np.interp(0.9, *curves[(kind, g)]):.2f}" for g in FIGURE4_GAMMAS
            )
            print(f"{kind}: share of the loss in the hardest 10% of samples: {shares}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
