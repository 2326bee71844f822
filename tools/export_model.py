#!/usr/bin/env python
"""
Export a trained FocalRetinaNet for inference: torch.export (.pt2) or ONNX (.onnx).

    python tools/export_model.py --config-file configs/quickstart.yaml \
        --weights output/quickstart/model_final.pth --format onnx --output model.onnx

The exported model takes one image (3, H, W) float in the config's INPUT.FORMAT (0-255),
resized as for the model, and returns boxes (M, 4) XYXY in its pixels, scores (M,) and
classes (M,) (retina_plugin/export.py). By default H and W are fixed: --height and --width, or
the config's MIN_SIZE_TEST x MAX_SIZE_TEST; with --dynamic any multiples of the backbone's size
divisibility (pad images with the pixel mean). The command then runs the exported model on an
image (--sample-image, or a generated one) and prints how far its boxes and scores are from
the eager model's. Trailing KEY VALUE pairs override the config.
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from retina_plugin.checkpoint import SafeDetectionCheckpointer  # noqa: E402
from retina_plugin.config import get_retina_cfg  # noqa: E402
from retina_plugin.export import export_onnx, export_program  # noqa: E402


def build_model_from(config_file, weights, opts):
    from detectron2.modeling import build_model

    cfg = get_retina_cfg(config_file, opts)
    cfg.MODEL.DEVICE = "cpu"  # exported for any device; traced on the CPU
    model = build_model(cfg).eval()
    checkpointer = SafeDetectionCheckpointer(model)
    checkpointer.load(weights)
    checkpointer.require_complete_load(weights)
    return cfg, model


def example_image(cfg, model, args):
    """The image to export with and check on: (3, H, W) float in the model's input format."""
    divisor = max(model.backbone.size_divisibility, 1)
    if args.sample_image:
        from detectron2.data import transforms as T
        from detectron2.data.detection_utils import read_image

        image = read_image(args.sample_image, format=cfg.INPUT.FORMAT)
        resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        image = resize.get_transform(image).apply_image(image)
        image = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
    else:
        height = args.height or cfg.INPUT.MIN_SIZE_TEST
        width = args.width or cfg.INPUT.MAX_SIZE_TEST
        image = synthetic_image(height, width)
    if args.dynamic:
        # Up to multiples of the divisibility, with the pixel mean: zeros once normalised.
        height, width = image.shape[1:]
        full_h = max(2, -(-height // divisor)) * divisor
        full_w = max(2, -(-width // divisor)) * divisor
        canvas = model.pixel_mean.cpu().view(3, 1, 1).expand(3, full_h, full_w).clone()
        canvas[:, :height, :width] = image
        image = canvas
    return image


def synthetic_image(height, width, seed=0):
    """A textured image with a few filled rectangles: something for a detector to score."""
    g = torch.Generator().manual_seed(seed)
    image = 100 + 30 * torch.rand(3, height, width, generator=g)
    for _ in range(6):
        h, w = (int(x) for x in torch.randint(12, max(13, min(height, width) // 3), (2,), generator=g))
        y = int(torch.randint(0, max(1, height - h), (1,), generator=g))
        x = int(torch.randint(0, max(1, width - w), (1,), generator=g))
        image[:, y : y + h, x : x + w] = torch.rand(3, 1, 1, generator=g) * 255
    return image


def run_exported(path, image):
    """(boxes, scores, classes) as numpy arrays from an exported .pt2 or .onnx file."""
    if path.endswith(".onnx"):
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        return tuple(session.run(["boxes", "scores", "classes"], {"image": image.numpy()}))
    program = torch.export.load(path)
    with torch.no_grad():
        return tuple(t.numpy() for t in program.module()(image))


def compare_with_eager(model, image, outputs):
    """{"detections": (eager, exported), "max_box_diff": ..., "max_score_diff": ...}."""
    with torch.no_grad():
        instances = model([{"image": image}])[0]["instances"]
    boxes, scores, classes = outputs
    report = {"detections": (len(instances), len(boxes))}
    if len(instances) == len(boxes):
        report["max_box_diff"] = float(np.abs(instances.pred_boxes.tensor.numpy() - boxes).max(initial=0))
        report["max_score_diff"] = float(np.abs(instances.scores.numpy() - scores).max(initial=0))
        report["same_classes"] = bool((instances.pred_classes.numpy() == classes).all())
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True, help="a trained checkpoint (.pth or .pkl)")
    parser.add_argument("--format", choices=["torch", "onnx"], default="torch")
    parser.add_argument("--output", required=True, help="the file to write (.pt2 or .onnx)")
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--dynamic", action="store_true",
                        help="any height and width that are multiples of the size divisibility")
    parser.add_argument("--sample-image", help="an image to export with and check on")
    args, opts = parser.parse_known_args(argv)
    if len(opts) % 2 or any(o.startswith("--") for o in opts[::2]):
        parser.error(f"unrecognised arguments {opts}: config overrides are KEY VALUE pairs")
    suffix = ".onnx" if args.format == "onnx" else ".pt2"
    if not args.output.endswith(suffix):
        parser.error(f"--format {args.format} writes a {suffix} file: name --output accordingly")
    cfg, model = build_model_from(args.config_file, args.weights, opts)
    image = example_image(cfg, model, args)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    if args.format == "onnx":
        export_onnx(model, image, args.output, dynamic=args.dynamic)
    else:
        torch.export.save(export_program(model, image, dynamic=args.dynamic), args.output)
    report = compare_with_eager(model, image, run_exported(args.output, image))
    size = "dynamic" if args.dynamic else f"{image.shape[1]}x{image.shape[2]}"
    print(f"wrote {args.output} ({args.format}, input {size}); against the eager model: {report}")
    return report


if __name__ == "__main__":
    main()
