#!/usr/bin/env python
"""
Make the pretrained backbone a config names (MODEL.WEIGHTS "retina_pretrained://FILE"): the
config's ResNet trained to classify which (shape, colour) pairs an image holds, a stand-in for
ImageNet pretraining (retina_plugin/pretrain.py says why this task). Made once, cached under
$DETECTRON2_DATASETS/pretrained/FILE; a second call finds it and trains nothing.

    python tools/pretrain_backbone.py --config-file configs/sparse.yaml

Seeded: the same flags write the same weights on one machine (another CPU's arithmetic makes
another file: pretrained/README.md). --output writes elsewhere (then set MODEL.WEIGHTS to that
path); --with-fpn pretrains the FPN too.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import retina_plugin  # noqa: E402,F401  (first: see retina_plugin/__init__.py)
import torch  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402
from retina_plugin.config import get_retina_cfg  # noqa: E402
from retina_plugin.pretrain import PRETRAIN_PREFIX, pretrain_backbone, pretrained_path  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, help="the detection config whose backbone to pretrain")
    parser.add_argument("--output", default=None,
                        help="the weights file (default: the file the config's MODEL.WEIGHTS names)")
    parser.add_argument("--iterations", type=int, default=12000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--with-fpn", action="store_true",
                        help="pretrain the FPN with the ResNet (the classifier pools every FPN level); "
                        "the file then holds backbone.* weights. Name it with --output or a MODEL.WEIGHTS override")
    parser.add_argument("--force", action="store_true", help="train again even if the file exists")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    for name in ("iterations", "batch_size", "image_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)}: use 1 or more")
    if args.with_fpn and args.image_size % 32:
        parser.error(f"--image-size {args.image_size}: with --with-fpn use a multiple of 32 (the FPN's coarsest stride)")
    if not args.lr > 0:
        parser.error(f"--lr {args.lr}: use a positive learning rate")
    cfg = get_retina_cfg(args.config_file, args.opts)
    output = args.output
    if output is None:
        if not cfg.MODEL.WEIGHTS.startswith(PRETRAIN_PREFIX):
            parser.error(
                f"{args.config_file} has MODEL.WEIGHTS {cfg.MODEL.WEIGHTS!r}, not a {PRETRAIN_PREFIX} "
                f"file: name the weights file with --output"
            )
        output = pretrained_path(cfg.MODEL.WEIGHTS)
    if os.path.isfile(output) and not args.force:
        # Cached: the same settings need no training; other settings must not be taken for them.
        made = torch.load(output, map_location="cpu", weights_only=True).get("pretraining", {})
        asked = {"iterations": args.iterations, "batch_size": args.batch_size, "base_lr": args.lr,
                 "seed": args.seed, "image_size": args.image_size, "with_fpn": args.with_fpn}
        made.setdefault("with_fpn", False)  # files from before the flag
        differ = [f"{k} {made.get(k)} there, {v} asked" for k, v in asked.items() if made.get(k) != v]
        if differ:
            parser.error(
                f"{output} exists, made with other settings (" + ", ".join(differ)
                + "): name another file with --output (or a MODEL.WEIGHTS override), or --force to replace it"
            )
        print(f"{output} exists already: nothing to do (--force trains it again).")
        return 0
    setup_logger(name="retina_plugin")
    print(f"Pretraining {cfg.MODEL.BACKBONE.NAME} (ResNet-{cfg.MODEL.RESNETS.DEPTH}) for {args.iterations} "
          f"iterations of {args.batch_size} images on {torch.get_num_threads()} threads -> {output}")
    record = pretrain_backbone(
        cfg, output, iterations=args.iterations, batch_size=args.batch_size, base_lr=args.lr,
        seed=args.seed, image_size=args.image_size, with_fpn=args.with_fpn,
    )
    print(json.dumps(record, indent=2))
    print(f"Written: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
