from typing import Optional

import torch
import torchvision
from torch import nn

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.structures import Boxes
from detectron2.structures.boxes import matched_pairwise_iou
from detectron2.modeling import META_ARCH_REGISTRY, build_anchor_generator, build_backbone
from detectron2.modeling.box_regression import Box2BoxTransform, _dense_box_regression_loss
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from .config import check_config_value
from .validate import validate_config
from .head import build_retina_head
from .imbalance import negative_pairs_per_positive
from .losses import build_cls_loss
from .sampling_free import data_prior

LOSS_NORMALIZERS = ("num_pos", "ema", "guided")
BOX_REG_LOSS_TYPES = ("smooth_l1", "giou", "diou", "ciou")
# The precisions class scores may be computed in at inference (MODEL.RETINANET.SCORE_DTYPE_TEST).
SCORE_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@META_ARCH_REGISTRY.register()
class FocalRetinaNet(RetinaNet):
    """
    RetinaNet whose head and classification loss come from the plugin's registries
    (MODEL.RETINANET.HEAD_NAME, MODEL.RETINANET.CLS_LOSS_TYPE) and whose loss normaliser is
    chosen by MODEL.RETINANET.LOSS_NORMALIZER.

    Anchors, matching, box regression, inference and post-processing are detectron2's
    RetinaNet's, and so is the state_dict: detectron2 RetinaNet checkpoints load unchanged.
    """

    @configurable
    def __init__(
        self,
        *,
        cls_loss: nn.Module,
        loss_normalizer: str = "ema",
        loss_normalizer_momentum: float = 0.9,
        loss_normalizer_init: float = 100.0,
        cls_loss_weight: float = 1.0,
        adaptive_score_thresh: Optional[float] = None,
        score_dtype_test: str = "float32",
        **kwargs,
    ):
        """
        Args:
            cls_loss: called as cls_loss(pred_logits (N, R, K), gt_labels (N, R)) and
                returning the classification loss summed over anchors (see CLS_LOSS_REGISTRY).
            loss_normalizer: "num_pos" (divide by the batch's positive anchors, the paper),
                "ema" (by their moving average, detectron2) or "guided" (Sampling-Free: the box
                loss by the positives, the class loss scaled to the box loss's size).
            loss_normalizer_momentum, loss_normalizer_init: the moving average of "ema".
            cls_loss_weight: a factor on the classification loss (1: detectron2's).
            adaptive_score_thresh: Sampling-Free's class-adaptive threshold: the classifier's
                prior, which replaces test_score_thresh (None: test_score_thresh).
            score_dtype_test: "float32" (detectron2's) or "float64": the precision the class
                scores are computed in at inference, and NMS run in (float32 ties every logit
                above about 16.6 at a score of 1).
            kwargs: the arguments of detectron2's RetinaNet; its focal_loss_* are unused.
        """
        super().__init__(**kwargs)
        self.check_values(
            check_config_value,
            loss_normalizer,
            loss_normalizer_momentum,
            loss_normalizer_init,
            self.box_reg_loss_type,
            cls_loss_weight,
            score_dtype_test,
        )
        self.cls_loss = cls_loss
        # K, or K + 1 for a loss with a background logit: how the head's outputs are read.
        self.num_logits = cls_loss.logits_per_anchor(self.num_classes)
        self.loss_normalizer_type = loss_normalizer
        self.loss_normalizer_momentum = loss_normalizer_momentum
        self.loss_normalizer_init = loss_normalizer_init
        self.cls_loss_weight = float(cls_loss_weight)
        if adaptive_score_thresh is not None:
            self.test_score_thresh = float(adaptive_score_thresh)
        self.score_dtype_test = SCORE_DTYPES[score_dtype_test]

    @staticmethod
    def check_values(check, loss_normalizer, momentum, init, box_reg_loss_type, cls_loss_weight=1.0,
                     score_dtype_test="float32"):
        """Call check(ok, key, value, allowed) for each value (see config.check_config_value)."""
        check(
            loss_normalizer in LOSS_NORMALIZERS,
            "MODEL.RETINANET.LOSS_NORMALIZER",
            loss_normalizer,
            f"choose one of {', '.join(LOSS_NORMALIZERS)}",
        )
        check(
            0 <= momentum < 1,
            "MODEL.RETINANET.LOSS_NORMALIZER_MOMENTUM",
            momentum,
            "use a momentum in [0, 1)",
        )
        check(init > 0, "MODEL.RETINANET.LOSS_NORMALIZER_INIT", init, "use a positive number")
        check(
            box_reg_loss_type in BOX_REG_LOSS_TYPES,
            "MODEL.RETINANET.BBOX_REG_LOSS_TYPE",
            box_reg_loss_type,
            f"choose one of {', '.join(BOX_REG_LOSS_TYPES)}",
        )
        number = isinstance(cls_loss_weight, (int, float)) and not isinstance(cls_loss_weight, bool)
        check(
            number and 0 < cls_loss_weight < float("inf"),
            "MODEL.RETINANET.CLS_LOSS_WEIGHT",
            cls_loss_weight,
            "use a positive finite number (1: detectron2's)",
        )
        check(
            score_dtype_test in tuple(SCORE_DTYPES),
            "MODEL.RETINANET.SCORE_DTYPE_TEST",
            score_dtype_test,
            f"choose one of {', '.join(SCORE_DTYPES)}",
        )

    @classmethod
    def check_config(cls, cfg, check):
        retinanet = cfg.MODEL.RETINANET
        cls.check_values(
            check,
            retinanet.LOSS_NORMALIZER,
            retinanet.LOSS_NORMALIZER_MOMENTUM,
            retinanet.LOSS_NORMALIZER_INIT,
            retinanet.BBOX_REG_LOSS_TYPE,
            retinanet.CLS_LOSS_WEIGHT,
            retinanet.SCORE_DTYPE_TEST,
        )
        for key in ("PRIOR_FROM_DATA", "ADAPTIVE_SCORE_THRESH"):
            value = retinanet.SAMPLING_FREE.get(key)
            check(isinstance(value, bool), f"MODEL.RETINANET.SAMPLING_FREE.{key}", value, "use True or False")

    @classmethod
    def from_config(cls, cfg):
        # Every key at once, before anything is built: one error listing all problems.
        validate_config(cfg)
        # RetinaNet.from_config's mapping, restated: calling it would build detectron2's head
        # too, only to replace it (and draw different random weights under the same seed).
        retinanet = cfg.MODEL.RETINANET
        backbone = build_backbone(cfg)
        backbone_shape = backbone.output_shape()
        missing = [f for f in retinanet.IN_FEATURES if f not in backbone_shape]
        check_config_value(
            not missing,
            "MODEL.RETINANET.IN_FEATURES",
            list(retinanet.IN_FEATURES),
            f"the backbone has no {missing}; it outputs {sorted(backbone_shape)}",
        )
        feature_shapes = [backbone_shape[f] for f in retinanet.IN_FEATURES]
        prior_prob = retinanet.PRIOR_PROB
        head_cfg = cfg
        if retinanet.SAMPLING_FREE.PRIOR_FROM_DATA:
            # Sampling-Free's optimal bias initialisation: the prior the training data measures.
            prior_prob = data_prior(cfg)["prior"]
            head_cfg = cfg.clone()
            head_cfg.defrost()
            head_cfg.MODEL.RETINANET.PRIOR_PROB = prior_prob
        return {
            "backbone": backbone,
            "head": build_retina_head(head_cfg, feature_shapes),
            "head_in_features": retinanet.IN_FEATURES,
            "anchor_generator": build_anchor_generator(cfg, feature_shapes),
            "box2box_transform": Box2BoxTransform(weights=retinanet.BBOX_REG_WEIGHTS),
            "anchor_matcher": Matcher(
                retinanet.IOU_THRESHOLDS, retinanet.IOU_LABELS, allow_low_quality_matches=True
            ),
            "num_classes": retinanet.NUM_CLASSES,
            "cls_loss": build_cls_loss(cfg),
            "loss_normalizer": retinanet.LOSS_NORMALIZER,
            "loss_normalizer_momentum": retinanet.LOSS_NORMALIZER_MOMENTUM,
            "loss_normalizer_init": retinanet.LOSS_NORMALIZER_INIT,
            "cls_loss_weight": retinanet.CLS_LOSS_WEIGHT,
            "adaptive_score_thresh": prior_prob if retinanet.SAMPLING_FREE.ADAPTIVE_SCORE_THRESH else None,
            "score_dtype_test": retinanet.SCORE_DTYPE_TEST,
            "smooth_l1_beta": retinanet.SMOOTH_L1_LOSS_BETA,
            "box_reg_loss_type": retinanet.BBOX_REG_LOSS_TYPE,
            "test_score_thresh": retinanet.SCORE_THRESH_TEST,
            "test_topk_candidates": retinanet.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": retinanet.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "vis_period": cfg.VIS_PERIOD,
            "input_format": cfg.INPUT.FORMAT,
        }

    def normalizer_checkpointable(self):
        """
        The moving-average normaliser as an object for detectron2's Checkpointer (pass it as a
        checkpointable), so that a resumed run continues it exactly. It stays out of the
        model's state_dict, so that detectron2's RetinaNet checkpoints load key for key.
        """
        return _NormalizerState(self)

    def normalizer(self, num_pos_anchors: int) -> float:
        """What the summed losses of a batch with `num_pos_anchors` positives are divided by."""
        if self.loss_normalizer_type in ("num_pos", "guided"):
            # The paper's: the positives of the whole batch, over all processes. Divided by
            # their number, since DDP averages the processes' gradients: N processes then
            # train as one process with all their images.
            world_size = comm.get_world_size()
            if world_size > 1:
                total = torch.tensor([float(num_pos_anchors)], device=self.device)
                torch.distributed.all_reduce(total)
                return max(total.item(), 1.0) / world_size
            return float(max(num_pos_anchors, 1))
        return self._ema_update(
            "loss_normalizer_ema",
            max(num_pos_anchors, 1),
            self.loss_normalizer_init,
            self.loss_normalizer_momentum,
        )

    def forward_training(self, images, features, predictions, gt_instances):
        pred_logits, pred_anchor_deltas = self._transpose_dense_predictions(
            predictions, [self.num_logits, 4]
        )
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        return self.losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes)

    def forward_inference(self, images, features, predictions):
        """detectron2's, with the class scores from the loss (sigmoid, or softmax over K + 1)."""
        pred_logits, pred_anchor_deltas = self._transpose_dense_predictions(
            predictions, [self.num_logits, 4]
        )
        anchors = self.anchor_generator(features)
        results = []
        for img_idx, image_size in enumerate(images.image_sizes):
            scores_per_image = [self.cls_loss.class_scores(x[img_idx].to(self.score_dtype_test)) for x in pred_logits]
            deltas_per_image = [x[img_idx] for x in pred_anchor_deltas]
            results.append(
                self.inference_single_image(anchors, scores_per_image, deltas_per_image, image_size)
            )
        return results

    def inference_single_image(self, anchors, box_cls, box_delta, image_size):
        """detectron2's; with float64 scores, NMS runs in float64 too (detectron2's batched_nms
        casts the boxes to float32, which torchvision's NMS refuses beside float64 scores)."""
        if box_cls[0].dtype != torch.float64:
            return super().inference_single_image(anchors, box_cls, box_delta, image_size)
        pred = self._decode_multi_level_predictions(
            anchors, box_cls, box_delta, self.test_score_thresh, self.test_topk_candidates, image_size
        )
        keep = torchvision.ops.batched_nms(
            pred.pred_boxes.tensor.double(), pred.scores, pred.pred_classes, self.test_nms_thresh
        )
        return pred[keep[: self.max_detections_per_image]]

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        """
        Args:
            anchors (list[Boxes]): one Boxes per level.
            pred_logits, pred_anchor_deltas (list[Tensor]): one per level, (N, Hi*Wi*A, K)
                and (N, Hi*Wi*A, 4).
            gt_labels, gt_boxes (list[Tensor]): one per image, (R,) and (R, 4) over all R
                anchors (see RetinaNet.label_anchors): a class, K for background, -1 ignored.

        Returns:
            dict with "loss_cls" and "loss_box_reg", each summed over anchors and divided by
            the normaliser; "loss_cls" times MODEL.RETINANET.CLS_LOSS_WEIGHT.
        """
        num_images = len(gt_labels)
        gt_labels = torch.stack(gt_labels)  # (N, R)
        pos_mask = (gt_labels >= 0) & (gt_labels != self.num_classes)
        num_pos_anchors = pos_mask.sum().item()
        normalizer = self.normalizer(num_pos_anchors)
        storage = get_event_storage()
        storage.put_scalar("num_pos_anchors", num_pos_anchors / num_images)
        if num_pos_anchors > 0:
            # R, the imbalance the classifier sees (tools/measure_imbalance.py measures it
            # over a whole data set): negative (anchor, class) pairs per positive pair.
            num_neg_anchors = (gt_labels == self.num_classes).sum().item()
            storage.put_scalar(
                "neg_pairs_per_pos",
                negative_pairs_per_positive(num_neg_anchors, num_pos_anchors, self.num_classes),
            )
        storage.put_scalar("loss_normalizer", normalizer)

        pred_logits = cat(pred_logits, dim=1)
        # Only a loss that asks gets (and costs) the quality target: losses written for the
        # three-argument call keep working.
        quality = None
        if self.cls_loss.needs_quality:
            quality = self.quality_targets(anchors, pred_anchor_deltas, gt_boxes, pos_mask)
        extra = {} if quality is None else {"quality": quality}
        loss_cls = self.cls_loss(pred_logits, gt_labels, Boxes.cat(anchors).tensor, **extra)
        if self.cls_loss.separable_over_anchors:
            with torch.no_grad():
                # What focal-loss users watch: how much of the loss the background still
                # makes. The loss of the few object anchors alone is cheap; the rest is
                # background's.
                extra = {} if quality is None else {"quality": quality[pos_mask][None]}
                object_loss = self.cls_loss(pred_logits[pos_mask][None], gt_labels[pos_mask][None], None, **extra)
                share = 1.0 - (object_loss / loss_cls.detach().clamp(min=1e-12)).item()
            storage.put_scalar("cls_loss_background_share", share)
        loss_box_reg = _dense_box_regression_loss(
            anchors,
            self.box2box_transform,
            pred_anchor_deltas,
            gt_boxes,
            pos_mask,
            box_reg_loss_type=self.box_reg_loss_type,
            smooth_l1_beta=self.smooth_l1_beta,
        )
        loss_box_reg = loss_box_reg / normalizer
        if self.loss_normalizer_type == "guided":
            # Sampling-Free's guided loss scaling: the class loss takes the box loss's size,
            # its gradient its own direction (the ratio carries no gradient).
            loss_cls = loss_cls * (loss_box_reg / loss_cls.clamp(min=1e-12)).detach()
        elif not self.cls_loss.normalized_by_itself:
            loss_cls = loss_cls / normalizer
        if self.cls_loss_weight != 1.0:
            loss_cls = loss_cls * self.cls_loss_weight
        return {"loss_cls": loss_cls, "loss_box_reg": loss_box_reg}


    def quality_targets(self, anchors, pred_anchor_deltas, gt_boxes, pos_mask):
        """
        (N, R): for each positive anchor the IoU between its predicted box (deltas detached,
        decoded by the model's Box2BoxTransform) and its matched ground-truth box; 0 elsewhere.
        The target of the IoU-aware losses (ClassificationLoss.needs_quality).
        """
        anchor_boxes = Boxes.cat(anchors).tensor  # (R, 4)
        deltas = cat(pred_anchor_deltas, dim=1).detach()  # (N, R, 4)
        matched = torch.stack(gt_boxes)  # (N, R, 4)
        quality = torch.zeros(pos_mask.shape, dtype=deltas.dtype, device=deltas.device)
        if pos_mask.any():
            predicted = self.box2box_transform.apply_deltas(
                deltas[pos_mask], anchor_boxes.expand_as(deltas)[pos_mask]
            )
            quality[pos_mask] = matched_pairwise_iou(Boxes(predicted), Boxes(matched[pos_mask])).to(quality.dtype)
        return quality


class _NormalizerState:
    def __init__(self, model: FocalRetinaNet):
        self.model = model

    def state_dict(self):
        state = {"loss_normalizer_ema": getattr(self.model, "loss_normalizer_ema", None)}
        if hasattr(self.model.cls_loss, "loss_state_dict"):  # a loss with state (GHM-C)
            state.update(self.model.cls_loss.loss_state_dict())
        return state

    def load_state_dict(self, state):
        value = state.get("loss_normalizer_ema")
        if value is not None:
            self.model.loss_normalizer_ema = float(value)
        if hasattr(self.model.cls_loss, "load_loss_state_dict"):
            self.model.cls_loss.load_loss_state_dict(state)
