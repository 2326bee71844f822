"""
Sampling-Free (Chen et al., "Is Heuristic Sampling Necessary in Training Deep Object
Detectors?", arXiv 1909.04868): train a dense detector with plain CE, no sampling and no
re-weighting, kept stable by three mechanisms, each a config key of every loss of the family:

- the optimal bias initialisation (MODEL.RETINANET.SAMPLING_FREE.PRIOR_FROM_DATA): the class
  logits start at the probability a (anchor, class) pair is positive in the training data,

      pi = positive anchors / (positive + negative anchors) / K,

  counted as training labels anchors (the imbalance meter's AnchorLabeler), once per data set
  and anchor config, and cached; it replaces PRIOR_PROB;
- guided loss scaling (MODEL.RETINANET.LOSS_NORMALIZER "guided"): the classification loss is
  multiplied by the detached ratio of the box-regression loss to it, r = stop_grad(L_box /
  L_cls), so both have the magnitude of L_box (meta_arch.FocalRetinaNet.losses);
- the class-adaptive score threshold (MODEL.RETINANET.SAMPLING_FREE.ADAPTIVE_SCORE_THRESH): at
  inference a class score counts when it exceeds the classifier's prior (pi above, or
  PRIOR_PROB), instead of SCORE_THRESH_TEST.
"""
import hashlib
import json
import logging
import math
import os
import random
from contextlib import contextmanager

import numpy as np
import torch

from detectron2.utils import comm

from .checkpoint import _write_atomically
from .config import ConfigValueError
from .data.builtin import datasets_root

logger = logging.getLogger(__name__)


def _prior_cache_key(cfg) -> dict:
    """What the anchors' labels depend on: the data, the anchors, the matching, the input size."""
    r = cfg.MODEL.RETINANET
    return {
        "datasets": list(cfg.DATASETS.TRAIN),
        "filter_empty": cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        "num_classes": r.NUM_CLASSES,
        "in_features": list(r.IN_FEATURES),
        "iou_thresholds": list(r.IOU_THRESHOLDS),
        "iou_labels": list(r.IOU_LABELS),
        "anchors": json.loads(json.dumps(cfg.MODEL.ANCHOR_GENERATOR, default=list)),
        "backbone": cfg.MODEL.BACKBONE.NAME,
        "input": [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST],
    }


def prior_cache_file(cfg) -> str:
    """The cached measurement of cfg's training data: $DETECTRON2_DATASETS/priors/<hash>.json."""
    digest = hashlib.sha1(json.dumps(_prior_cache_key(cfg), sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(datasets_root(), "priors", f"{digest}.json")


def measure_prior(cfg) -> dict:
    """Count the training data's positive and negative anchors (no cache): the prior's record."""
    from detectron2.modeling import build_model

    from .imbalance import measure_imbalance

    if not cfg.DATASETS.TRAIN:
        raise ConfigValueError(
            "MODEL.RETINANET.SAMPLING_FREE.PRIOR_FROM_DATA = True needs DATASETS.TRAIN, the data "
            "the prior is measured on: name a training set, or set PRIOR_FROM_DATA False."
        )
    plain = cfg.clone()
    plain.defrost()
    plain.MODEL.RETINANET.SAMPLING_FREE.PRIOR_FROM_DATA = False
    plain.MODEL.RETINANET.SAMPLING_FREE.ADAPTIVE_SCORE_THRESH = False
    plain.MODEL.DEVICE = "cpu"
    # Only the anchor generator and the matcher count: the labelling model is never trained.
    report = measure_imbalance(plain, build_model(plain).eval(), list(cfg.DATASETS.TRAIN))
    positive, negative = report["positive_anchors"], report["negative_anchors"]
    if positive == 0:
        raise ConfigValueError(
            f"MODEL.RETINANET.SAMPLING_FREE.PRIOR_FROM_DATA: the training data "
            f"{list(cfg.DATASETS.TRAIN)} has no anchor matched to an object, so there is no prior "
            f"to measure: check its annotations and the anchor sizes (MODEL.ANCHOR_GENERATOR.SIZES)."
        )
    num_classes = cfg.MODEL.RETINANET.NUM_CLASSES
    prior = positive / (positive + negative) / num_classes
    return {
        "prior": prior,
        "bias": math.log(prior / (1 - prior)),
        "positive_anchors": positive,
        "negative_anchors": negative,
        "images": report["images"],
        "classes": num_classes,
        "key": _prior_cache_key(cfg),
    }


@contextmanager
def _random_states_kept():
    """Python's, NumPy's and torch's CPU random states restored on exit."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def data_prior(cfg) -> dict:
    """
    The Sampling-Free prior of cfg's training data (see measure_prior), measured once and
    cached (prior_cache_file); in a distributed run the main process measures, the others read.
    Logged with its value.
    """
    path = prior_cache_file(cfg)
    if comm.is_main_process() and not os.path.isfile(path):
        # Measuring builds a model and reads the data: random draws that must not move the
        # seeded draws after it (the head's initial weights), or a run that measured would
        # start elsewhere than the same run reading the cache.
        with _random_states_kept():
            record = measure_prior(cfg)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _write_atomically(path, lambda f: f.write(json.dumps(record, indent=2).encode()))
        source = "measured"
    else:
        source = "cached"
    comm.synchronize()
    with open(path) as f:
        record = json.load(f)
    logger.info(
        f"Sampling-Free prior of {record['key']['datasets']} ({source}, {path}): pi = "
        f"{record['prior']:.4g} (class bias {record['bias']:.3f}) from {record['positive_anchors']} "
        f"positive and {record['negative_anchors']} negative anchors of {record['images']} images, "
        f"{record['classes']} classes"
    )
    return record


def inference_score_thresh(cfg) -> float:
    """The score threshold cfg's model infers with: the prior with ADAPTIVE_SCORE_THRESH (the
    data's, measured or cached, with PRIOR_FROM_DATA), else SCORE_THRESH_TEST."""
    retinanet = cfg.MODEL.RETINANET
    if not retinanet.SAMPLING_FREE.ADAPTIVE_SCORE_THRESH:
        return float(retinanet.SCORE_THRESH_TEST)
    if retinanet.SAMPLING_FREE.PRIOR_FROM_DATA:
        return float(data_prior(cfg)["prior"])
    return float(retinanet.PRIOR_PROB)
