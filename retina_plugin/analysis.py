"""
The numbers behind the paper's analysis figures (plotted by tools/plot_paper_figures.py), and
behind tools/anchor_fit.py.

Figure 1: the focal loss against the probability of the ground-truth class p_t, for several
gamma. Figure 4: the cumulative distribution of the normalised loss over positive and over
negative samples of a trained detector, for several gamma: how much of the total loss the
hardest few samples carry. Anchor fit: before NMS, how well the boxes of the anchors trained
on each object fit it, and whether the classifier scores the better-fitting ones higher.
"""
from typing import Dict, Iterable, List, Tuple

import numpy as np
import torch

from detectron2.structures import Boxes, pairwise_iou

from .evaluation import rank_correlation

from .ops.focal_loss import sigmoid_focal_loss

FIGURE1_GAMMAS = (0.0, 0.5, 1.0, 2.0, 5.0)
FIGURE4_GAMMAS = (0.0, 0.5, 1.0, 2.0)


def loss_against_p_t(p_t: np.ndarray, gammas: Iterable[float] = FIGURE1_GAMMAS) -> Dict[float, np.ndarray]:
    """
    Figure 1: {gamma: FL(p_t)} with FL(p_t) = -(1 - p_t) ** gamma * log(p_t) (no alpha), for
    p_t in (0, 1], computed by the plugin's sigmoid_focal_loss on the logits log(p_t / (1 - p_t))
    of positive samples.
    """
    p_t = torch.as_tensor(np.asarray(p_t, dtype=np.float64))
    logits = torch.logit(p_t).unsqueeze(-1)  # one class; p_t = 1 gives logit inf, loss 0
    labels = torch.zeros(len(p_t), dtype=torch.long)
    return {
        gamma: sigmoid_focal_loss(logits, labels, -1, gamma, reduction="none", impl="eager")[:, 0].numpy()
        for gamma in gammas
    }


def cumulative_normalized_loss(p_t: np.ndarray, gamma: float) -> Tuple[np.ndarray, np.ndarray]:
    """
    Figure 4's curve for one set of samples: their focal losses at `gamma` (no alpha),
    normalised to sum to 1 and sorted from lowest to highest, as (fraction of samples,
    cumulative normalised loss), both rising to 1.
    """
    p_t = np.clip(np.asarray(p_t, dtype=np.float64), 1e-12, 1.0)
    loss = -((1.0 - p_t) ** gamma) * np.log(p_t)
    loss = np.sort(loss)
    total = loss.sum()
    cumulative = np.cumsum(loss) / total if total > 0 else np.linspace(0, 1, len(loss))
    fractions = np.arange(1, len(loss) + 1) / len(loss)
    return fractions, cumulative


@torch.no_grad()
def collect_p_t(model, batches, negatives_per_image=100_000, seed=0):
    """
    Figure 4's samples: p_t of every (anchor, class) pair of a detector's predictions on the
    images of `batches` (lists of detectron2 model inputs with "instances"), split into
    positives (an object anchor and its class) and negatives (every other class of an anchor
    that is not ignored), at most `negatives_per_image` negatives per image, drawn at random.
    p is the loss's class score (sigmoid, or softmax for a softmax loss); p_t = p for a
    positive, 1 - p for a negative.

    Returns:
        {"positive": array, "negative": array} of p_t.
    """
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    found = {"positive": [], "negative": []}
    for batch in batches:
        images = model.preprocess_image(batch)
        features = model.backbone(images.tensor)
        features = [features[f] for f in model.head_in_features]
        pred_logits, _ = model._transpose_dense_predictions(model.head(features), [model.num_logits, 4])
        anchors = model.anchor_generator(features)
        gt_instances = [x["instances"].to(model.device) for x in batch]
        gt_labels, _ = model.label_anchors(anchors, gt_instances)
        scores = model.cls_loss.class_scores(torch.cat(pred_logits, dim=1)).double().cpu()
        num_classes = scores.shape[-1]
        for image_scores, labels in zip(scores, gt_labels):
            labels = labels.cpu()
            valid = labels >= 0
            is_target = labels[valid].unsqueeze(1) == torch.arange(num_classes)
            p = image_scores[valid]
            found["positive"].append(p[is_target])
            negatives = 1.0 - p[~is_target]
            if len(negatives) > negatives_per_image:
                pick = torch.randperm(len(negatives), generator=generator)[:negatives_per_image]
                negatives = negatives[pick]
            found["negative"].append(negatives)
    return {kind: torch.cat(values).numpy() for kind, values in found.items()}


# The paper's initialisation of the class bias, which every run but the init grid's uses.
PAPER_PRIOR_PROB = 0.01


def describe_run(cfg) -> str:
    """A run in a few words: its loss, Sampling-Free's pieces, a prior other than the paper's,
    clipping, schedule and seed."""
    retina = cfg.MODEL.RETINANET
    alpha, gamma = retina.FOCAL_LOSS_ALPHA, retina.FOCAL_LOSS_GAMMA
    alpha_text = "per-class alpha" if isinstance(alpha, (list, tuple)) else f"alpha {alpha:g}"
    if retina.CLS_LOSS_TYPE != "focal":
        loss = retina.CLS_LOSS_TYPE
    elif gamma == 0:
        loss = "CE" if alpha == -1 else f"balanced CE, {alpha_text}"
    else:
        loss = f"FL gamma {gamma:g}, {alpha_text}"
    sampling_free = [name for name, on in (("guided scaling", retina.LOSS_NORMALIZER == "guided"),
                                            ("prior from data", retina.SAMPLING_FREE.PRIOR_FROM_DATA),
                                            ("adaptive threshold", retina.SAMPLING_FREE.ADAPTIVE_SCORE_THRESH)) if on]
    if sampling_free:
        loss += f" ({', '.join(sampling_free)})"
    if not retina.SAMPLING_FREE.PRIOR_FROM_DATA and retina.PRIOR_PROB != PAPER_PRIOR_PROB:
        loss += f", bias prior pi = {retina.PRIOR_PROB:g}"  # the init grid's other cell
    clipping = "clipping" if cfg.SOLVER.CLIP_GRADIENTS.ENABLED else "no clipping"
    steps = ",".join(map(str, cfg.SOLVER.STEPS))
    return f"{loss}, {clipping}, {cfg.SOLVER.MAX_ITER} iterations (steps {steps}), seed {cfg.SEED}"


def trained_model_and_batches(cfg, weights, dataset_name, max_images):
    """
    (model, batches) for the analyses above: the config's model with a trained checkpoint's
    weights (every weight loaded, else an error), in eval mode, and annotated_batches of the
    first `max_images` images of `dataset_name`, one image each.
    """
    from detectron2.modeling import build_model

    from .checkpoint import SafeDetectionCheckpointer

    model = build_model(cfg)
    checkpointer = SafeDetectionCheckpointer(model)
    checkpointer.load(weights)
    checkpointer.require_complete_load(weights)
    model.eval()
    return model, annotated_batches(cfg, dataset_name, max_images)


def annotated_batches(cfg, dataset_name, max_images, batch_size=1):
    """
    A generator of batches (lists of `batch_size` model inputs) of the first `max_images` images
    of `dataset_name` at test-time size, in the data set's order, with their annotations
    (which training's matching needs and the test mapper drops); a last short batch is kept.
    """
    from detectron2.data import DatasetMapper, build_detection_test_loader
    from detectron2.data import transforms as T

    mapper = DatasetMapper(
        is_train=True,
        augmentations=[T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)],
        image_format=cfg.INPUT.FORMAT,
    )
    loader = build_detection_test_loader(cfg, dataset_name, mapper=mapper)
    batch = []
    for index, inputs in enumerate(loader):
        if index >= max_images:
            break
        batch += inputs
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def object_anchor_fit(pred_boxes, class_scores, gt_boxes, gt_classes, matched_idxs, anchor_labels):
    """
    For each object of one image, the anchors the training matcher assigns to it (labels 1: the
    anchors its losses train to score its class and regress its box): the IoU of each one's
    predicted box with the object, and which of them scores the object's class highest.

    Args:
        pred_boxes (R, 4): each anchor's predicted box (XYXY). class_scores (R, K).
        gt_boxes (G, 4), gt_classes (G,): the objects. matched_idxs, anchor_labels (R,): the
            Matcher's output on the (G, R) IoU matrix.

    Returns:
        list of (ious, scores) per object that has matched anchors: the anchors' IoUs and
        their scores of the object's class, as float64 numpy arrays.
    """
    found = []
    for index in range(len(gt_boxes)):
        mine = (matched_idxs == index) & (anchor_labels == 1)
        if not mine.any():
            continue
        ious = pairwise_iou(Boxes(gt_boxes[index : index + 1]), Boxes(pred_boxes[mine]))[0]
        scores = class_scores[mine, gt_classes[index]]
        found.append((ious.double().cpu().numpy(), scores.double().cpu().numpy()))
    return found


def summarize_anchor_fit(objects: List[Tuple[np.ndarray, np.ndarray]], thresholds=(0.5, 0.75, 0.9)):
    """
    object_anchor_fit's lists of all images, as

        {"objects": n, "anchors": number of matched anchors,
         "anchors_at": {t: % of matched anchors whose box has IoU >= t},
         "mean_anchor_iou": their mean IoU,
         "best_at", "first_at": {t: % of objects whose best-fitting / highest-scoring anchor
                                 has IoU >= t},
         "mean_best", "mean_first": the mean IoU of those anchors,
         "within_object_rank_correlation": Spearman's rho of score and IoU over each object's
                                           anchors, averaged over objects with at least 3}

    `anchors_at` says how good every trained anchor's box is (the features and the box
    branch); `first_at` against `best_at` says how well the scores pick among them (what NMS
    keeps is the highest-scoring box).
    """
    if not objects:
        raise ValueError("no object has a matched anchor: nothing to measure")
    ious = np.concatenate([i for i, _ in objects])
    best = np.array([i.max() for i, _ in objects])
    first = np.array([i[s.argmax()] for i, s in objects])
    rhos = [rank_correlation(s, i) for i, s in objects]
    rhos = [r for r in rhos if r == r]  # under 3 anchors, or all alike: nothing to rank
    share = lambda values, t: float((values >= t).mean() * 100)  # noqa: E731
    return {
        "objects": len(objects),
        "anchors": int(ious.size),
        "anchors_at": {t: share(ious, t) for t in thresholds},
        "mean_anchor_iou": float(ious.mean()),
        "best_at": {t: share(best, t) for t in thresholds},
        "first_at": {t: share(first, t) for t in thresholds},
        "mean_best": float(best.mean()),
        "mean_first": float(first.mean()),
        "within_object_rank_correlation": float(np.mean(rhos)) if rhos else float("nan"),
    }


@torch.no_grad()
def anchor_box_fit(model, batches, thresholds=(0.5, 0.75, 0.9)):
    """
    summarize_anchor_fit over the images of `batches` (lists of detectron2 model inputs with
    "instances", at test-time size): a trained detector's predictions before NMS, each anchor
    matched to the objects as in training (the model's anchor_matcher) and its box decoded by
    the model's box2box_transform.
    """
    model.eval()
    objects = []
    for batch in batches:
        images = model.preprocess_image(batch)
        features = model.backbone(images.tensor)
        features = [features[f] for f in model.head_in_features]
        pred_logits, pred_deltas = model._transpose_dense_predictions(model.head(features), [model.num_logits, 4])
        anchors = Boxes.cat(model.anchor_generator(features))
        scores = model.cls_loss.class_scores(torch.cat(pred_logits, dim=1))
        deltas = torch.cat(pred_deltas, dim=1)
        for image_scores, image_deltas, inputs in zip(scores, deltas, batch):
            gt = inputs["instances"].to(model.device)
            if len(gt) == 0:
                continue
            matched_idxs, anchor_labels = model.anchor_matcher(pairwise_iou(gt.gt_boxes, anchors))
            pred_boxes = model.box2box_transform.apply_deltas(image_deltas, anchors.tensor)
            objects += object_anchor_fit(pred_boxes, image_scores, gt.gt_boxes.tensor, gt.gt_classes, matched_idxs, anchor_labels)
    return summarize_anchor_fit(objects, thresholds)
