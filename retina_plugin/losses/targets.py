"""Per-class targets of the IoU-aware losses, from anchor labels and their quality."""
import torch


def soft_class_targets(gt_labels, num_classes, quality):
    """
    (N, R, K) targets: an anchor's quality (its IoU, see ClassificationLoss.needs_quality) at its
    own class, 0 at every other class and everywhere for background; and the (N, R, 1) mask of
    the anchors that count (ignored anchors, label -1, do not).
    """
    is_target = gt_labels.unsqueeze(-1) == torch.arange(num_classes, device=gt_labels.device)
    target = torch.where(is_target, quality.unsqueeze(-1), torch.zeros((), dtype=quality.dtype, device=quality.device))
    return target, (gt_labels >= 0).unsqueeze(-1)
