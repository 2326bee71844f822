"""
detectron2's COCOEvaluator with a choice of COCO evaluation engine (TEST.COCO_EVAL_ENGINE).

COCOEvaluator uses its fast C++ COCOeval only when detectron2._C loads, which it does not in
this install; it then runs pycocotools' COCOeval, in pure Python. "faster_coco_eval" runs the
maintained C++ drop-in of the faster-coco-eval package instead, which gives the same 12 stats
(tests/test_evaluation.py) many times faster (bench/bench_eval.py).
"""
import contextlib

from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation import coco_evaluation

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

    def _eval_predictions(self, predictions, img_ids=None):
        if self.engine == "pycocotools":
            return super()._eval_predictions(predictions, img_ids=img_ids)
        with _cocoeval_of_fast_impl(faster_cocoeval_class()):
            self._use_fast_impl = True
            try:
                return super()._eval_predictions(predictions, img_ids=img_ids)
            finally:
                self._use_fast_impl = False
