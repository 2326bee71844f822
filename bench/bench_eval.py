"""
COCO bbox evaluation: faster-coco-eval (TEST.COCO_EVAL_ENGINE "faster_coco_eval", the default)
against pycocotools' COCOeval, which detectron2's COCOEvaluator runs without detectron2._C.

    python bench/bench_eval.py [--images 2000 5000] [--repeats 1]

A COCO-shaped synthetic result set per size: 80 classes, about 7.3 ground-truth boxes and 80
detections per image (COCO val2017: 7.3 boxes per image; RetinaNet keeps up to 100 detections).
Both engines evaluate it through detectron2's _evaluate_predictions_on_coco (evaluate,
accumulate, summarize), alternately; the script prints each engine's median seconds, the ratio
pycocotools / faster-coco-eval measured in this run, and the largest difference of the 12 stats.
"""
import argparse
import contextlib
import io
import os
import statistics
import sys
import time

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detectron2.evaluation.coco_evaluation import _evaluate_predictions_on_coco

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from retina_plugin.evaluation import faster_cocoeval_class  # noqa: E402


def coco_shaped(num_images, seed=0, num_classes=80, boxes_per_image=7.3, detections_per_image=80):
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    for image_id in range(1, num_images + 1):
        width, height = 640, 480
        images.append({"id": image_id, "width": width, "height": height, "file_name": f"{image_id}.jpg"})
        gts = []
        for _ in range(rng.poisson(boxes_per_image)):
            w, h = np.exp(rng.uniform(np.log(8), np.log(400), 2))
            w, h = min(w, width - 1), min(h, height - 1)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            category = int(rng.integers(1, num_classes + 1))
            gts.append((category, [x, y, w, h]))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        for k in range(detections_per_image):
            if k < len(gts) and rng.random() < 0.8:  # a hit, jittered
                category, (x, y, w, h) = gts[k]
                box = [x + rng.normal(0, 0.1 * w), y + rng.normal(0, 0.1 * h), w * rng.uniform(0.8, 1.2), h * rng.uniform(0.8, 1.2)]
                score = rng.uniform(0.3, 1.0)
            else:  # background clutter
                category = int(rng.integers(1, num_classes + 1))
                box = [*rng.uniform(0, 500, 2), *np.exp(rng.uniform(np.log(8), np.log(300), 2))]
                score = rng.uniform(0.05, 0.6)
            results.append({"image_id": image_id, "category_id": category, "bbox": [float(v) for v in box], "score": float(score)})
    categories = [{"id": c, "name": f"class {c}"} for c in range(1, num_classes + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def evaluate(dataset, results, cocoeval):
    gt = COCO()
    gt.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        start = time.perf_counter()
        evaluated = _evaluate_predictions_on_coco(gt, results, "bbox", cocoeval_fn=cocoeval)
    return time.perf_counter() - start, np.array(evaluated.stats)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[2000, 5000])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    engines = {"pycocotools": COCOeval, "faster-coco-eval": faster_cocoeval_class()}
    print(f"{'images':>7} {'gt boxes':>9} {'detections':>11} {'engine':>17} {'seconds':>8} {'vs pycocotools':>15}")
    for num_images in args.images:
        dataset, results = coco_shaped(num_images)
        times = {name: [] for name in engines}
        stats = {}
        for _ in range(args.repeats):
            for name, cocoeval in engines.items():
                seconds, stats[name] = evaluate(dataset, results, cocoeval)
                times[name].append(seconds)
        reference = statistics.median(times["pycocotools"])
        for name in engines:
            median = statistics.median(times[name])
            print(f"{num_images:>7} {len(dataset['annotations']):>9} {len(results):>11} {name:>17} "
                  f"{median:>8.2f} {reference / median:>14.1f}x")
        difference = np.abs(stats["faster-coco-eval"] - stats["pycocotools"]).max()
        print(f"{'':>7} largest difference of the 12 stats: {difference:.2e} (AP {stats['pycocotools'][0]:.4f})")


if __name__ == "__main__":
    main()
