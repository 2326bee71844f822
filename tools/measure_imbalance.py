#!/usr/bin/env python
"""
Measure how imbalanced a data set is for a RetinaNet config: anchors per image, positive and
ignored anchors per image, R = negative (anchor, class) pairs per positive pair, and the
step-0 classification loss R implies (retina_plugin/imbalance.py).

    python tools/measure_imbalance.py --config-file configs/quickstart.yaml
    python tools/measure_imbalance.py --config-file configs/retina_r50.yaml --max-images 500
    python tools/measure_imbalance.py --config-file configs/quickstart.yaml \
        --dataset mine_train data/train.json data/images --dataset-name mine_train

Anchors are generated and matched exactly as in training (the model's anchor generator and
label_anchors), on the images as the test transform resizes them and as the model pads them.
Measures the config's DATASETS.TRAIN unless --dataset-name says otherwise. Prints a table and
writes it as JSON (--output, default OUTPUT_DIR/imbalance.json). Trailing KEY VALUE pairs
override the config. No weights are loaded and no pixels are read: only annotations. Ends with
the measured regime nearest to this R and how the losses ranked there (the imbalance sweep; until
the sweep in the paper's setup is finished, what it has beside the from-scratch one).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import retina_plugin  # noqa: E402  (first: see retina_plugin/__init__.py)
from detectron2.modeling import build_model  # noqa: E402
from retina_plugin.ablations.regimes import format_regimes, measured_regimes  # noqa: E402
from retina_plugin.config import get_retina_cfg  # noqa: E402
from retina_plugin.data import register_coco_dataset  # noqa: E402
from retina_plugin.imbalance import format_report, measure_imbalance  # noqa: E402


def argument_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--dataset", nargs=3, action="append", default=[],
                        metavar=("NAME", "JSON", "IMAGE_DIR"),
                        help="register a COCO-format data set as NAME (repeatable)")
    parser.add_argument("--dataset-name", action="append", default=[], metavar="NAME",
                        help="a registered data set to measure (repeatable); default DATASETS.TRAIN")
    parser.add_argument("--max-images", type=int, default=None,
                        help="measure a seeded random sample of this many images")
    parser.add_argument("--keep-empty", action="store_true",
                        help="count images without annotations too (training drops them when "
                        "DATALOADER.FILTER_EMPTY_ANNOTATIONS is True, the default)")
    parser.add_argument("--output", default=None, help="the JSON report")
    parser.add_argument("--allow-unsafe-yaml", action="store_true")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser


def main(argv=None):
    args = argument_parser().parse_args(argv)
    if args.max_images is not None and args.max_images < 1:
        raise SystemExit(f"--max-images {args.max_images}: use 1 or more")
    own = {name: register_coco_dataset(name, j, d) for name, j, d in args.dataset}
    cfg = get_retina_cfg(args.config_file, args.opts, allow_python_tags=args.allow_unsafe_yaml)
    names = args.dataset_name or list(cfg.DATASETS.TRAIN)
    if not names:
        raise SystemExit("The config has no DATASETS.TRAIN: name a data set with --dataset-name.")
    used = [n for n in names if n in own]
    if used and "MODEL.RETINANET.NUM_CLASSES" not in args.opts[::2]:
        cfg.MODEL.RETINANET.NUM_CLASSES = len(own[used[0]])
    cfg.DATASETS.TRAIN = tuple(names)
    cfg.DATASETS.TEST = ()
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    retina_plugin.validate_config(cfg, datasets=True)
    model = build_model(cfg).eval()
    report = measure_imbalance(
        cfg, model, names, max_images=args.max_images,
        filter_empty=False if args.keep_empty else None, progress=True,
    )
    print(format_report(report))
    output = args.output or os.path.join(cfg.OUTPUT_DIR, "imbalance.json")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        json.dump(report, f, indent=2)
    print(f"JSON: {output}")
    ratio = report["negative_pairs_per_positive"]
    print(format_regimes(ratio, measured_regimes(ratio)))
    return report


if __name__ == "__main__":
    main()
