"""
How large a gradient the classification loss sends, and how much of it the background sends:
the quantity the Sampling-Free paper (Chen et al., arXiv 1909.04868) holds responsible for the
harm of the imbalance, and the one gradient clipping bounds. tools/gradient_sizes.py measures
it for several losses at the same weights.

For a batch, with L the classification loss as training computes it (normaliser or guided
scaling included) and z the logits of every (anchor, class) pair, the gradient dL/dz is split
by anchor into the background anchors' rows and the object anchors' rows (ignored anchors have
none). Each part is carried back to the parameters on its own (the backward pass is linear),
which gives the norm of the background's and of the objects' share of the classification
gradient over all trainable parameters. Clipping acts on each parameter's gradient of the whole
loss (classification and box regression): the largest of those norms, and how many exceed the
clipping value, say whether it would act on this batch.
"""
from typing import Dict, Iterable, List

import torch

from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage


def _norm(tensors: Iterable) -> float:
    squares = [t.double().pow(2).sum() for t in tensors if t is not None]
    return float(torch.stack(squares).sum().sqrt()) if squares else 0.0


def _add(a, b):
    return b if a is None else a if b is None else a + b


def classification_gradient_sizes(model, batch: List[dict], clip_value: float) -> Dict[str, float]:
    """
    The gradient sizes of one training batch (detectron2 model inputs with "instances"), for a
    FocalRetinaNet in training mode; nothing is updated.

    Returns:
        {"loss_cls", "loss_box_reg": the losses as training computes them,
         "logits_background", "logits_objects": the norm of dL_cls/dz over the background
             anchors' and over the object anchors' pairs,
         "params_background", "params_objects", "params_cls": the norm over all trainable
             parameters of the background's share, the objects' share and their sum,
         "largest_param": the largest norm of one parameter's gradient of the whole loss,
         "params_over_clip": how many parameters' gradients of the whole loss exceed clip_value}
    """
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    images = model.preprocess_image(batch)
    features = model.backbone(images.tensor)
    features = [features[f] for f in model.head_in_features]
    logits, deltas = model._transpose_dense_predictions(model.head(features), [model.num_logits, 4])
    logits, deltas = torch.cat(logits, dim=1), torch.cat(deltas, dim=1)
    anchors = model.anchor_generator(features)
    gt_labels, gt_boxes = model.label_anchors(anchors, [x["instances"].to(model.device) for x in batch])
    with EventStorage():  # the loss logs its scalars there
        losses = model.losses([Boxes.cat(anchors)], [logits], gt_labels, [deltas], gt_boxes)

    # One backward through the loss (the plugin's fused loss allows no second): its gradient
    # at the logits, then carried back in parts.
    (grad_logits,) = torch.autograd.grad(losses["loss_cls"], logits, retain_graph=True)
    box = torch.autograd.grad(losses["loss_box_reg"], params, retain_graph=True, allow_unused=True)
    labels = torch.stack(gt_labels)
    background = (labels == model.num_classes).unsqueeze(-1)
    objects = ((labels >= 0) & (labels != model.num_classes)).unsqueeze(-1)
    shares = {}
    for name, mask in (("background", background), ("objects", objects)):
        shares[name] = torch.autograd.grad(logits, params, grad_logits * mask, retain_graph=True, allow_unused=True)
    summed = [_add(b, o) for b, o in zip(shares["background"], shares["objects"])]
    whole = [_add(c, b) for c, b in zip(summed, box)]
    per_param = [float(g.double().norm()) for g in whole if g is not None]
    return {
        "loss_cls": float(losses["loss_cls"]),
        "loss_box_reg": float(losses["loss_box_reg"]),
        "logits_background": _norm([grad_logits * background]),
        "logits_objects": _norm([grad_logits * objects]),
        "params_background": _norm(shares["background"]),
        "params_objects": _norm(shares["objects"]),
        "params_cls": _norm(summed),
        "largest_param": max(per_param, default=0.0),
        "params_over_clip": sum(n > clip_value for n in per_param),
    }


def mean_gradient_sizes(model, batches: Iterable[List[dict]], clip_value: float) -> Dict[str, float]:
    """classification_gradient_sizes averaged over `batches` (at least one)."""
    found = [classification_gradient_sizes(model, batch, clip_value) for batch in batches]
    if not found:
        raise ValueError("no batch to measure the gradients on")
    return {key: sum(f[key] for f in found) / len(found) for key in found[0]}
