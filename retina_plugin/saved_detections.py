"""
What a run's saved detections (inference/instances_predictions.pth, COCOEvaluator's: per image,
its "instances" with XYWH boxes, contiguous class ids and scores) still say without the
weights: the AP at a higher score threshold, and how much of the AP hangs on tied scores.
"""
import collections
import contextlib
import io
import tempfile
from typing import Dict, Iterable, List

import torch

from detectron2.data import DatasetCatalog
from detectron2.structures import Boxes, BoxMode, pairwise_iou

from .evaluation import EngineCOCOEvaluator

# Relative to a score: below float32's relative spacing (2^-24, 6e-8), so moving a tied score
# by it never passes a detection of another score, and far above float64's (1e-16).
TIE_STEP = 1e-8


def evaluate_saved(cfg, predictions: List[dict]) -> Dict[float, float]:
    """{IoU threshold: AP} of saved detections on cfg's DATASETS.TEST[0], with its
    TEST.COCO_EVAL_ENGINE, as COCOEvaluator evaluates them after inference. A ValueError if
    there is no detection at all (COCOEvaluator then computes nothing)."""
    if not any(p["instances"] for p in predictions):
        raise ValueError("the run saved no detections (a diverged or untrained model): nothing to evaluate")
    # Loading a built-in set first makes (or finds) its files and sets its metadata's json_file,
    # which COCOEvaluator then reads, as after the test loader in training.
    DatasetCatalog.get(cfg.DATASETS.TEST[0])
    with tempfile.TemporaryDirectory() as scratch:  # the data set's COCO json, if it has none
        evaluator = EngineCOCOEvaluator(cfg.DATASETS.TEST[0], engine=cfg.TEST.COCO_EVAL_ENGINE, tasks=("bbox",),
                                        distributed=False, output_dir=scratch)
        evaluator.reset()
        # evaluate() rewrites the detections' class ids in place: it gets copies.
        evaluator._predictions.extend({**p, "instances": [dict(d) for d in p["instances"]]} for p in predictions)
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.evaluate()
    return evaluator.ap_at_each_iou["bbox"]


def detections_scoring_above(predictions: List[dict], score_thresh: float, max_per_image: int) -> List[dict]:
    """
    Saved detections keeping only those scoring above `score_thresh`: what inference at that
    threshold would have saved, when the run was evaluated at a lower one. Exact, because
    RetinaNet's inference only ever compares scores: a box above the threshold is among each
    level's top-k candidates at either threshold, is suppressed by NMS only through
    higher-scoring boxes, which are above it too, and survives the per-image cap, unless the cap
    (`max_per_image`, TEST.DETECTIONS_PER_IMAGE) was reached with every kept box still above the
    threshold: then boxes above it may have been dropped, and a ValueError says so. (Tied
    scores aside: which of two tied boxes NMS keeps may change with the other candidates.)
    """
    kept = []
    for image in predictions:
        instances = image["instances"]
        if len(instances) >= max_per_image and min(d["score"] for d in instances) > score_thresh:
            raise ValueError(
                f"image {image['image_id']}: its {len(instances)} saved detections reach TEST.DETECTIONS_PER_IMAGE "
                f"({max_per_image}) and all score above {score_thresh:g}, so detections above it may have been cut "
                "by the cap: evaluate the weights at that threshold instead (train_net.py --eval-only "
                "MODEL.RETINANET.SCORE_THRESH_TEST ...).")
        kept.append(dict(image, instances=[d for d in instances if d["score"] > score_thresh]))
    return kept


def tied_detections(predictions: List[dict]) -> int:
    """How many saved detections share their score with another one (float32 scores of a
    confident classifier: every logit above about 16.6 is a score of exactly 1)."""
    counts = collections.Counter(d["score"] for p in predictions for d in p["instances"])
    return sum(n for n in counts.values() if n > 1)


def ties_ordered_by_fit(dataset_dicts: Iterable[dict], predictions: List[dict]) -> List[dict]:
    """
    Saved detections whose tied scores are ordered by how well each box fits: a tied score s
    becomes s * (1 + TIE_STEP * IoU), IoU that with the object of its class the box overlaps
    most (0 for none); no detection passes one of another score. Each object's best box then
    comes before its duplicates at every IoU threshold, so the AP is about the most that any
    order of the ties gives: what ranking them by the model's logits
    (MODEL.RETINANET.SCORE_DTYPE_TEST float64) could add at most, give or take how duplicates
    of one object interleave with other objects' boxes.
    """
    counts = collections.Counter(d["score"] for p in predictions for d in p["instances"])
    objects = {r["image_id"]: [a for a in r.get("annotations", []) if not a.get("iscrowd", 0)] for r in dataset_dicts}
    ordered = []
    for image in predictions:
        instances = [dict(d) for d in image["instances"]]
        tied = [d for d in instances if counts[d["score"]] > 1]
        gt = objects.get(image["image_id"], [])
        if tied and gt:
            gt_boxes = Boxes(torch.tensor([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in gt],
                                          dtype=torch.float64))
            boxes = Boxes(torch.tensor([BoxMode.convert(d["bbox"], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) for d in tied],
                                       dtype=torch.float64))
            same_class = torch.tensor([a["category_id"] for a in gt])[:, None] == torch.tensor([d["category_id"] for d in tied])[None, :]
            fit = (pairwise_iou(gt_boxes, boxes) * same_class).max(dim=0).values
            for d, iou in zip(tied, fit.tolist()):
                d["score"] = d["score"] * (1 + TIE_STEP * iou)
        ordered.append(dict(image, instances=instances))
    return ordered
