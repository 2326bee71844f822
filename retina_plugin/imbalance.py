"""
How imbalanced a detection problem is, as RetinaNet's classifier sees it.

The paper's premise is a foreground-background imbalance of about 1:1000 anchors, over 80
classes. What the sigmoid classifier is trained on is (anchor, class) pairs: a background
anchor gives K negative pairs, a positive anchor one positive and K - 1 negative pairs, and
ignored anchors none. So

    R = (K * negative anchors + (K - 1) * positive anchors) / positive anchors

negative pairs per positive pair. With the standard initialisation (class bias 0, p = 0.5)
every pair costs log 2, so CE normalised by the positives starts at (R + 1) log 2: about 280
for the quickstart's data, about 7 x 10^4 for COCO, which is why the paper's CE diverges there.

measure_imbalance() counts anchors exactly as training labels them: the model's own anchor
generator and label_anchors (Matcher, IoU thresholds, ignore band, low-quality matches), on the
images as the test transform resizes them and as the model pads them (backbone size
divisibility). tools/measure_imbalance.py is its command line.
"""
import math
import random
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from detectron2.data import detection_utils
from detectron2.data import get_detection_dataset_dicts
from detectron2.data import transforms as T
from detectron2.structures import ImageList

from .losses import sigmoid_focal_loss


def anchor_counts(gt_labels: torch.Tensor, num_classes: int) -> Dict[str, int]:
    """Positive, ignored and negative anchors of labels from label_anchors (K background, -1 ignored)."""
    ignored = int((gt_labels < 0).sum())
    negative = int((gt_labels == num_classes).sum())
    return {"positive": gt_labels.numel() - ignored - negative, "ignored": ignored, "negative": negative}


def negative_pairs_per_positive(negative_anchors, positive_anchors, num_classes) -> float:
    """R: negative (anchor, class) pairs per positive pair (inf without positives)."""
    if positive_anchors <= 0:
        return math.inf
    negative_pairs = num_classes * negative_anchors + (num_classes - 1) * positive_anchors
    return negative_pairs / positive_anchors


def initial_losses(ratio: float, prior_prob: float) -> Dict[str, float]:
    """
    The classification loss per positive pair at step 0 that R = `ratio` implies, when every
    logit starts at the same value: CE with the standard initialisation (p = 0.5), CE with the
    prior initialisation (p = prior_prob), and the paper's focal loss (alpha 0.25, gamma 2)
    with the prior. Computed with the plugin's own loss.
    """
    # One positive pair and one negative pair at the initial logit.
    labels = torch.tensor([0, 1])  # one class: label 0 is positive, 1 (= K) background

    def per_positive(p, alpha, gamma):
        logit = torch.full((2, 1), math.log(p / (1 - p)), dtype=torch.float64)
        pair = sigmoid_focal_loss(logit, labels, alpha=alpha, gamma=gamma, reduction="none", impl="eager")
        return float(pair[0, 0] + ratio * pair[1, 0])

    return {
        "ce_standard_init": per_positive(0.5, -1, 0.0),
        "ce_prior_init": per_positive(prior_prob, -1, 0.0),
        "focal_prior_init": per_positive(prior_prob, 0.25, 2.0),
    }


def _percentiles(values: Sequence[float]) -> Dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {"median": math.nan, "p10": math.nan, "p90": math.nan, "mean": math.nan}
    return {
        "median": float(np.median(a)),
        "p10": float(np.percentile(a, 10)),
        "p90": float(np.percentile(a, 90)),
        "mean": float(a.mean()),
    }


class AnchorLabeler:
    """The anchors of a model and their training labels for one image's annotations."""

    def __init__(self, cfg, model):
        self.model = model
        self.num_classes = cfg.MODEL.RETINANET.NUM_CLASSES
        self.resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")
        self.mask_format = cfg.INPUT.MASK_FORMAT
        self._feature_shapes = {}

    def feature_shapes(self, padded_hw):
        """The shapes of the model's head input features for a padded input of that size,
        from the backbone itself (once per size), so any backbone's rounding is respected."""
        if padded_hw not in self._feature_shapes:
            with torch.no_grad():
                image = torch.zeros((1, 3, *padded_hw), device=self.model.device)
                features = self.model.backbone(image)
            self._feature_shapes[padded_hw] = [
                tuple(features[f].shape[-2:]) for f in self.model.head_in_features
            ]
        return self._feature_shapes[padded_hw]

    def __call__(self, record: dict) -> torch.Tensor:
        """The anchor labels (R,) of one dataset dict: a class, K background, -1 ignored."""
        height, width = record["height"], record["width"]
        # The test transform only reads the image's shape: no pixels are decoded.
        resize = self.resize.get_transform(np.empty((height, width, 0), np.uint8))
        image_size = (resize.new_h, resize.new_w) if isinstance(resize, T.ResizeTransform) else (height, width)
        transforms = T.TransformList([resize])
        annotations = [
            detection_utils.transform_instance_annotations(obj, transforms, image_size)
            for obj in record.get("annotations", [])
            if obj.get("iscrowd", 0) == 0
        ]
        instances = detection_utils.annotations_to_instances(annotations, image_size, self.mask_format)
        instances = detection_utils.filter_empty_instances(instances).to(self.model.device)
        # Padded as the model pads its batch (an empty tensor carries the sizes only).
        backbone = self.model.backbone
        padded = ImageList.from_tensors(
            [torch.empty((0, *image_size))],
            backbone.size_divisibility,
            padding_constraints=getattr(backbone, "padding_constraints", None),
        )
        fake_features = [torch.empty((1, 0, *hw)) for hw in self.feature_shapes(tuple(padded.tensor.shape[-2:]))]
        anchors = self.model.anchor_generator(fake_features)
        gt_labels, _ = self.model.label_anchors(anchors, [instances])
        return gt_labels[0]


def measure_imbalance(
    cfg,
    model,
    dataset_names: Sequence[str],
    max_images: Optional[int] = None,
    filter_empty: Optional[bool] = None,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """
    Anchor statistics of `dataset_names` for `model` (a RetinaNet built from `cfg`).

    Args:
        max_images: measure a random sample of this many images (seeded by `seed`).
        filter_empty: drop images without annotations, as training does; default
            cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS.

    Returns:
        a JSON-able dict: images, classes, anchors per image, positive and ignored anchors per
        image (median, p10, p90, mean), positive and negative anchors in all, R (negative pairs per positive pair, over all images),
        and the initial losses R implies (see initial_losses).
    """
    from tqdm import tqdm

    if filter_empty is None:
        filter_empty = cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
    records = get_detection_dataset_dicts(list(dataset_names), filter_empty=filter_empty)
    total_images = len(records)
    if max_images is not None and max_images < len(records):
        records = random.Random(seed).sample(records, max_images)
    labeler = AnchorLabeler(cfg, model)
    num_classes = labeler.num_classes
    per_image: Dict[str, List[int]] = {"anchors": [], "positive": [], "ignored": [], "negative": []}
    for record in tqdm(records, desc="matching anchors", disable=not progress):
        labels = labeler(record)
        counts = anchor_counts(labels, num_classes)
        per_image["anchors"].append(labels.numel())
        for kind, value in counts.items():
            per_image[kind].append(value)
    positive, negative = sum(per_image["positive"]), sum(per_image["negative"])
    ratio = negative_pairs_per_positive(negative, positive, num_classes)
    return {
        "datasets": list(dataset_names),
        "images": len(records),
        "images_in_datasets": total_images,
        "classes": num_classes,
        "anchors_per_image": _percentiles(per_image["anchors"]),
        "positive_anchors_per_image": _percentiles(per_image["positive"]),
        "ignored_anchors_per_image": _percentiles(per_image["ignored"]),
        "positive_anchors": positive,
        "negative_anchors": negative,
        "anchors_per_positive": (sum(per_image["anchors"]) / positive) if positive else math.inf,
        "negative_pairs_per_positive": ratio,
        "initial_loss_per_positive": initial_losses(ratio, cfg.MODEL.RETINANET.PRIOR_PROB)
        if math.isfinite(ratio)
        else {},
        "prior_prob": cfg.MODEL.RETINANET.PRIOR_PROB,
    }


def format_report(report: dict) -> str:
    """The report as a table for the terminal."""
    from tabulate import tabulate

    def stats(key):
        s = report[key]
        return f"{s['median']:.0f} (p10 {s['p10']:.0f}, p90 {s['p90']:.0f}; mean {s['mean']:.1f})"

    losses = report["initial_loss_per_positive"]
    rows = [
        ("data sets", ", ".join(report["datasets"])),
        ("images measured", f"{report['images']} of {report['images_in_datasets']}"),
        ("classes K", report["classes"]),
        ("anchors per image", stats("anchors_per_image")),
        ("positive anchors per image", stats("positive_anchors_per_image")),
        ("ignored anchors per image", stats("ignored_anchors_per_image")),
        ("anchors per positive anchor", f"{report['anchors_per_positive']:.0f}"),
        ("R: negative (anchor, class) pairs per positive", f"{report['negative_pairs_per_positive']:.3g}"),
    ]
    if losses:
        prior = report["prior_prob"]
        rows += [
            ("step-0 CE per positive, standard init (p 0.5)", f"{losses['ce_standard_init']:.4g}"),
            (f"step-0 CE per positive, prior init (p {prior:g})", f"{losses['ce_prior_init']:.4g}"),
            ("step-0 FL (0.25, 2) per positive, prior init", f"{losses['focal_prior_init']:.4g}"),
        ]
    return tabulate(rows, tablefmt="simple_outline")
