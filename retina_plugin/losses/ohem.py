import torch

from detectron2.config import configurable
from detectron2.layers import nms
from detectron2.utils.events import get_event_storage

from ..config import check_config_value
from ..ops.focal_loss import sigmoid_focal_loss
from .build import CLS_LOSS_REGISTRY, ClassificationLoss


def select_hard_anchors(
    anchor_losses, gt_labels, anchors, num_classes, batch_size, nms_thresh, positive_fraction
):
    """
    Online hard example mining over the anchors of each image (the paper's Table 1d): score
    each anchor that is not ignored by its loss, drop anchors that overlap a harder one by more
    than nms_thresh IoU (1 drops none), and keep the batch_size hardest; with positive_fraction
    in (0, 1), at most that fraction of them are object anchors and the rest background
    (0.25 is the paper's 1:3).

    Args:
        anchor_losses, gt_labels: (N, R): each anchor's loss, and its label (a class in
            [0, num_classes), num_classes or more for background, negative if ignored).
        anchors: (R, 4) the anchors' boxes, XYXY.

    Returns:
        (N, R) bool: the anchors kept.
    """
    kept = torch.zeros_like(gt_labels, dtype=torch.bool)
    for i in range(gt_labels.shape[0]):
        candidates = torch.nonzero(gt_labels[i] >= 0).squeeze(1)
        scores = anchor_losses[i, candidates].float()
        if nms_thresh < 1:
            order = nms(anchors[candidates].float(), scores, nms_thresh)  # hardest first
        else:
            order = torch.argsort(scores, descending=True)
        ranked = candidates[order]
        if positive_fraction > 0:
            is_object = gt_labels[i, ranked] < num_classes
            objects = ranked[is_object][: int(batch_size * positive_fraction)]
            background = ranked[~is_object][: batch_size - len(objects)]
            ranked = torch.cat([objects, background])
        kept[i, ranked[:batch_size]] = True
    return kept


@CLS_LOSS_REGISTRY.register_as("ohem")
class OHEMLoss(ClassificationLoss):
    """
    The OHEM baseline of the paper's Table 1d: sigmoid CE (unbalanced, summed over classes) on
    the hardest anchors of each image only, chosen by select_hard_anchors with
    MODEL.RETINANET.OHEM.{BATCH_SIZE_PER_IMAGE, NMS_THRESH, POSITIVE_FRACTION}.
    FOCAL_LOSS_ALPHA and FOCAL_LOSS_GAMMA are not used.
    """

    # The loss of a subset of anchors would mine that subset again.
    separable_over_anchors = False

    @configurable
    def __init__(
        self, *, batch_size_per_image=128, nms_thresh=0.5, positive_fraction=-1.0, impl="auto"
    ):
        super().__init__()
        self.check_values(check_config_value, batch_size_per_image, nms_thresh, positive_fraction)
        self.batch_size_per_image = int(batch_size_per_image)
        self.nms_thresh = float(nms_thresh)
        self.positive_fraction = float(positive_fraction)
        self.impl = impl

    @staticmethod
    def check_values(check, batch_size_per_image, nms_thresh, positive_fraction):
        key = "MODEL.RETINANET.OHEM."
        check(
            isinstance(batch_size_per_image, int) and batch_size_per_image >= 1,
            key + "BATCH_SIZE_PER_IMAGE",
            batch_size_per_image,
            "use a whole number of anchors >= 1 (the paper: 128)",
        )
        check(
            0 < nms_thresh <= 1,
            key + "NMS_THRESH",
            nms_thresh,
            "use an IoU in (0, 1], 1 for no suppression (the paper: 0.5 or 0.7)",
        )
        check(
            positive_fraction == -1 or 0 < positive_fraction < 1,
            key + "POSITIVE_FRACTION",
            positive_fraction,
            "use a fraction in (0, 1) (0.25 is 1:3), or -1 for the hardest anchors whatever "
            "their labels",
        )

    @classmethod
    def check_config(cls, cfg, check):
        ohem = cfg.MODEL.RETINANET.OHEM
        cls.check_values(check, ohem.BATCH_SIZE_PER_IMAGE, ohem.NMS_THRESH, ohem.POSITIVE_FRACTION)

    @classmethod
    def from_config(cls, cfg):
        ohem = cfg.MODEL.RETINANET.OHEM
        return {
            "batch_size_per_image": ohem.BATCH_SIZE_PER_IMAGE,
            "nms_thresh": ohem.NMS_THRESH,
            "positive_fraction": ohem.POSITIVE_FRACTION,
            "impl": cfg.MODEL.RETINANET.FOCAL_LOSS_IMPL,
        }

    def forward(self, pred_logits, gt_labels, anchors, quality=None):
        num_classes = pred_logits.shape[-1]
        with torch.no_grad():
            anchor_losses = sigmoid_focal_loss(
                pred_logits.detach(), gt_labels, -1, 0, reduction="none", impl=self.impl
            ).sum(dim=-1)
            kept = select_hard_anchors(
                anchor_losses,
                gt_labels,
                anchors,
                num_classes,
                self.batch_size_per_image,
                self.nms_thresh,
                self.positive_fraction,
            )
        _log_kept(kept, gt_labels, num_classes)
        mined_labels = torch.where(kept, gt_labels, torch.full_like(gt_labels, -1))
        return sigmoid_focal_loss(pred_logits, mined_labels, -1, 0, reduction="sum", impl=self.impl)

    def extra_repr(self):
        return (
            f"batch_size_per_image={self.batch_size_per_image}, nms_thresh={self.nms_thresh}, "
            f"positive_fraction={self.positive_fraction}"
        )


def _log_kept(kept, gt_labels, num_classes):
    try:
        storage = get_event_storage()
    except AssertionError:  # outside a trainer: nothing to log to
        return
    objects = (kept & (gt_labels < num_classes)).sum().item() / kept.shape[0]
    storage.put_scalar("ohem_object_anchors", objects)
    storage.put_scalar("ohem_background_anchors", kept.sum().item() / kept.shape[0] - objects)
