"""
detectron2's COCOEvaluator with a choice of COCO evaluation engine (TEST.COCO_EVAL_ENGINE).

COCOEvaluator uses its fast C++ COCOeval only when detectron2._C loads, which it does not in
this install; it then runs pycocotools' COCOeval, in pure Python. "faster_coco_eval" runs the
maintained C++ drop-in of the faster-coco-eval package instead, which gives the same 12 stats
(tests/test_evaluation.py) many times faster (bench/bench_eval.py).
"""
import contextlib
from typing import Dict, Iterable, List

import numpy as np
import torch

from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation import coco_evaluation
from detectron2.structures import Boxes, BoxMode, pairwise_iou

COCO_EVAL_ENGINES = ("faster_coco_eval", "pycocotools")


def faster_cocoeval_class():
    """faster-coco-eval's COCOeval, with pycocotools' interface (params, evaluate, accumulate,
    summarize, stats, eval["precision"]) on pycocotools' COCO objects."""
    from faster_coco_eval import COCOeval_faster

    class FasterCOCOeval(COCOeval_faster):
        def __init__(self, coco_gt=None, coco_dt=None, iou_type="bbox"):
            # Its summary table printed as pycocotools prints it, not to its own logger.
            super().__init__(coco_gt, coco_dt, iou_type, print_function=print)

    return FasterCOCOeval


def ap_at_each_iou(coco_eval) -> Dict[float, float]:
    """
    {IoU threshold: AP in %} of an evaluated and accumulated COCOeval, at each threshold t of
    its params.iouThrs:

        AP_t = 100 * mean(precision[t, recall, class, area "all", last maxDets] over entries > -1)

    Their mean is COCO's AP; AP_0.5 and AP_0.75 are its AP50 and AP75. Where AP50 is saturated,
    they show at which IoU a difference in AP lies: in scoring, or in the boxes' precision.
    """
    precision = coco_eval.eval["precision"]
    thresholds = np.asarray(coco_eval.params.iouThrs)
    result = {}
    for index, threshold in enumerate(thresholds):
        values = precision[index, :, :, 0, -1]
        values = values[values > -1]
        result[round(float(threshold), 2)] = float(values.mean() * 100) if values.size else float("nan")
    return result


def first_ranked_localisation(dataset_dicts: Iterable[dict], predictions: List[dict], thresholds=(0.5, 0.75, 0.9)):
    """
    How well a detector's boxes fit the objects, apart from how it ranks them. Each detection
    (COCOEvaluator's saved predictions: per image, boxes XYWH with contiguous class ids) is
    assigned to the object of its class that it overlaps most; for each object (not crowd),
    `best` is the IoU of its best-fitting detection and `first` that of its highest-scoring
    one (0 for an object no detection overlaps). Returns

        {"objects": n, "best": {t: % of objects with best >= t}, "first": {t: ...},
         "mean_best": mean best IoU, "mean_first": mean first IoU,
         "score_iou_rank_correlation": Spearman's rho of score and IoU over the first boxes
                                       at IoU >= 0.5}

    Where `best` reaches a threshold and `first` does not, the detector has a box that fits
    but scores another one higher: at that IoU a loss of AP is in the scores, not the boxes.
    The rank correlation says whether, across objects, the better-fitting boxes score higher,
    which is what AP at a strict IoU rewards beyond the share of boxes that reach it.
    """
    by_image = {p["image_id"]: p["instances"] for p in predictions}
    best, first, first_score = [], [], []
    for record in dataset_dicts:
        objects = [a for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
        if not objects:
            continue
        detections = by_image.get(record["image_id"], [])
        if not detections:
            best += [0.0] * len(objects)
            first += [0.0] * len(objects)
            first_score += [0.0] * len(objects)
            continue
        gt = Boxes(torch.tensor([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in objects], dtype=torch.float64))
        boxes = Boxes(torch.tensor([BoxMode.convert(d["bbox"], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) for d in detections], dtype=torch.float64))
        same_class = torch.tensor([a["category_id"] for a in objects])[:, None] == torch.tensor([d["category_id"] for d in detections])[None, :]
        iou = pairwise_iou(gt, boxes) * same_class  # (objects, detections)
        assigned_iou, assigned = iou.max(dim=0)
        scores = torch.tensor([d["score"] for d in detections])
        for index in range(len(objects)):
            mine = (assigned == index) & (assigned_iou > 0)
            best.append(float(assigned_iou[mine].max()) if mine.any() else 0.0)
            first.append(float(assigned_iou[mine][scores[mine].argmax()]) if mine.any() else 0.0)
            first_score.append(float(scores[mine].max()) if mine.any() else 0.0)
    best, first, first_score = np.asarray(best), np.asarray(first), np.asarray(first_score)
    found = first >= 0.5
    share = lambda values, t: float((values >= t).mean() * 100) if values.size else float("nan")  # noqa: E731
    return {
        "objects": int(best.size),
        "best": {t: share(best, t) for t in thresholds},
        "first": {t: share(first, t) for t in thresholds},
        "mean_best": float(best.mean()) if best.size else float("nan"),
        "mean_first": float(first.mean()) if first.size else float("nan"),
        "score_iou_rank_correlation": rank_correlation(first_score[found], first[found]),
    }


def rank_correlation(x, y) -> float:
    """Spearman's rank correlation of two equally long arrays: NaN for fewer than 3 values or
    a constant array, where it says nothing."""
    x, y = np.asarray(x), np.asarray(y)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    rank_x, rank_y = (np.argsort(np.argsort(v, kind="stable"), kind="stable").astype(float) for v in (x, y))
    return float(np.corrcoef(rank_x, rank_y)[0, 1])


def format_ap_at_each_iou(ap: Dict[float, float]) -> str:
    return ", ".join(f"{threshold:.2f}: {value:.1f}" for threshold, value in ap.items())


@contextlib.contextmanager
def _cocoeval_of_fast_impl(cocoeval_class):
    """COCOEvaluator picks COCOeval_opt, a name of its module, when use_fast_impl is set:
    make it `cocoeval_class` for the duration of one evaluation only."""
    saved = coco_evaluation.COCOeval_opt
    coco_evaluation.COCOeval_opt = cocoeval_class
    try:
        yield
    finally:
        coco_evaluation.COCOeval_opt = saved


class EngineCOCOEvaluator(COCOEvaluator):
    """COCOEvaluator whose COCOeval is `engine`'s: "faster_coco_eval" or "pycocotools"."""

    def __init__(self, dataset_name, engine="faster_coco_eval", **kwargs):
        if engine not in COCO_EVAL_ENGINES:
            raise ValueError(f"COCO evaluation engine {engine!r}: choose one of {', '.join(COCO_EVAL_ENGINES)}")
        kwargs["use_fast_impl"] = False  # detectron2's own fast one needs detectron2._C
        super().__init__(dataset_name, **kwargs)
        self.engine = engine
        self.ap_at_each_iou = {}  # {iou type: {IoU threshold: AP}} of the last evaluation

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        # Logged, not returned: extra keys would change the "copypaste" lines every tool parses.
        if coco_eval is not None:
            self.ap_at_each_iou[iou_type] = ap_at_each_iou(coco_eval)
            self._logger.info(f"{iou_type} AP at each IoU threshold: {format_ap_at_each_iou(self.ap_at_each_iou[iou_type])}")
        return super()._derive_coco_results(coco_eval, iou_type, class_names=class_names)

    def _eval_predictions(self, predictions, img_ids=None):
        if self.engine == "pycocotools":
            return super()._eval_predictions(predictions, img_ids=img_ids)
        with _cocoeval_of_fast_impl(faster_cocoeval_class()):
            self._use_fast_impl = True
            try:
                return super()._eval_predictions(predictions, img_ids=img_ids)
            finally:
                self._use_fast_impl = False
