"""
Detections of a trained model drawn on images, a folder of them, or a video.

    python -m retina_plugin.demo --config-file configs/quickstart.yaml \
        --weights output/quickstart/model_final.pth --input datasets/retina_shapes_v2/val/images \
        --output demo_out [--confidence-threshold 0.5]

For each image it writes the picture with its detections (detectron2's Visualizer, class names
from the metadata of the config's first test data set) and, for all inputs, detections.json:
boxes (x0, y0, x1, y1 in pixels), classes and scores. A video input gives a video output.
"""
import argparse
import glob
import json
import os

import cv2
import tqdm

from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.utils.visualizer import Visualizer

import retina_plugin  # noqa: F401  (registers the plugin)
from retina_plugin.checkpoint import SafeDetectionCheckpointer
from retina_plugin.config import get_retina_cfg

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def build_predictor(cfg, weights):
    """detectron2's DefaultPredictor, its weights loaded without running code from the file."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = ""  # DefaultPredictor would load them with detectron2's own loader
    predictor = DefaultPredictor(cfg)
    checkpointer = SafeDetectionCheckpointer(predictor.model)
    checkpointer.load(weights)
    checkpointer.require_complete_load(weights)
    return predictor


def detections_of(instances, class_names):
    instances = instances.to("cpu")
    return [
        {
            "box": [round(float(v), 2) for v in box],
            "class_id": int(label),
            "class_name": class_names[int(label)] if int(label) < len(class_names) else str(int(label)),
            "score": round(float(score), 4),
        }
        for box, label, score in zip(
            instances.pred_boxes.tensor.tolist(), instances.pred_classes, instances.scores
        )
    ]


def draw(image_bgr, instances, metadata, scale=1.0):
    visualizer = Visualizer(image_bgr[:, :, ::-1], metadata, scale=scale)
    return visualizer.draw_instance_predictions(instances.to("cpu")).get_image()[:, :, ::-1]


def list_images(inputs):
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            paths += sorted(
                os.path.join(item, f) for f in os.listdir(item) if f.lower().endswith(IMAGE_EXTENSIONS)
            )
        else:
            paths += sorted(glob.glob(os.path.expanduser(item))) or [item]
    return paths


def run_images(predictor, paths, metadata, threshold, output, scale=1.0):
    os.makedirs(output, exist_ok=True)
    results = {}
    for path in tqdm.tqdm(paths, desc="images"):
        image = read_image(path, format="BGR")
        instances = predictor(image)["instances"]
        instances = instances[instances.scores >= threshold]
        picture = draw(image, instances, metadata, scale)
        cv2.imwrite(os.path.join(output, os.path.basename(path)), picture)
        results[path] = detections_of(instances, metadata.get("thing_classes", []))
    return results


def run_video(predictor, path, metadata, threshold, output):
    os.makedirs(output, exist_ok=True)
    video = cv2.VideoCapture(path)
    if not video.isOpened():
        raise FileNotFoundError(f"Video {path} cannot be opened.")
    fps = video.get(cv2.CAP_PROP_FPS) or 25
    width, height = int(video.get(cv2.CAP_PROP_FRAME_WIDTH)), int(video.get(cv2.CAP_PROP_FRAME_HEIGHT))
    out_path = os.path.join(output, os.path.splitext(os.path.basename(path))[0] + ".mp4")
    writer = cv2.VideoWriter(out_path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    results, index = {}, 0
    while True:
        ok, frame = video.read()
        if not ok:
            break
        instances = predictor(frame)["instances"]
        instances = instances[instances.scores >= threshold]
        writer.write(draw(frame, instances, metadata))
        results[f"{path}#frame{index}"] = detections_of(instances, metadata.get("thing_classes", []))
        index += 1
    writer.release()
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True, help="a checkpoint (.pth or .pkl)")
    parser.add_argument("--input", nargs="+", help="images, folders or globs")
    parser.add_argument("--video-input", help="a video file")
    parser.add_argument("--output", required=True, help="a folder for the pictures and detections.json")
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    parser.add_argument("--scale", type=float, default=1.0, help="enlarge pictures (small images)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE overrides")
    args = parser.parse_args(argv)
    if not args.input and not args.video_input:
        parser.error("give --input or --video-input")

    cfg = get_retina_cfg(args.config_file, args.opts)
    import torch

    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    # Keep every candidate above the threshold asked for, which may be below the config's.
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = min(cfg.MODEL.RETINANET.SCORE_THRESH_TEST, args.confidence_threshold)
    cfg.freeze()
    names = [*cfg.DATASETS.TEST, *cfg.DATASETS.TRAIN]
    metadata = MetadataCatalog.get(names[0]) if names else MetadataCatalog.get("__unused")

    predictor = build_predictor(cfg, args.weights)
    if args.video_input:
        results = run_video(predictor, args.video_input, metadata, args.confidence_threshold, args.output)
    else:
        paths = list_images(args.input)
        results = run_images(
            predictor, paths, metadata, args.confidence_threshold, args.output, args.scale
        )
    with open(os.path.join(args.output, "detections.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"Wrote {len(results)} result(s) to {os.path.abspath(args.output)}")
    return results


if __name__ == "__main__":
    main()
