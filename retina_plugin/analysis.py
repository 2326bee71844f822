"""
The numbers behind the paper's analysis figures (plotted by tools/plot_paper_figures.py).

Figure 1: the focal loss against the probability of the ground-truth class p_t, for several
gamma. Figure 4: the cumulative distribution of the normalised loss over positive and over
negative samples of a trained detector, for several gamma: how much of the total loss the
hardest few samples carry.
"""
from typing import Dict, Iterable, Tuple

import numpy as np
import torch

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
