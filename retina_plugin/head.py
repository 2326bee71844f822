from typing import List, Optional

import torch

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead

from .config import check_config_value
from .losses import build_cls_loss
from .registry import NamedRegistry

RETINA_HEAD_REGISTRY = NamedRegistry("RETINA_HEAD")
RETINA_HEAD_REGISTRY.__doc__ = """
Registry for RetinaNet heads, selected by MODEL.RETINANET.HEAD_NAME.

A registered object is called as `obj(cfg, input_shape)` with the list of ShapeSpec of the
features in MODEL.RETINANET.IN_FEATURES, and returns a module that maps that list of features
to (class logits, box deltas): two lists over levels of (N, A*K, Hi, Wi) and (N, A*4, Hi, Wi).
"""


def build_retina_head(cfg, input_shape: List[ShapeSpec]):
    """Build the head named by cfg.MODEL.RETINANET.HEAD_NAME."""
    name = cfg.MODEL.RETINANET.HEAD_NAME
    return RETINA_HEAD_REGISTRY.get_by_config("MODEL.RETINANET.HEAD_NAME", name)(cfg, input_shape)


@RETINA_HEAD_REGISTRY.register()
class RetinaHead(RetinaNetHead):
    """
    The paper's head, shared by all FPN levels: a class and a box tower of NUM_CONVS x
    (conv 3x3, optional NORM, ReLU), then a 3x3 conv to A*K logits and one to A*4 deltas.
    Convs start from normal(std 0.01) with bias 0, except the logits' bias,
    b = -log((1 - pi) / pi) with pi = PRIOR_PROB, so that every anchor starts as background
    with probability 1 - pi and the first iterations do not diverge.

    The classification loss (MODEL.RETINANET.CLS_LOSS_TYPE) says how many logits an anchor
    has and what their prior bias is: K and the above for the sigmoid losses, so that weights
    and state_dict keys are detectron2's RetinaNetHead's; K + 1 for a softmax.
    """

    @configurable
    def __init__(self, *, prior_bias: Optional[torch.Tensor] = None, cls_loss=None, **kwargs):
        """
        Args:
            prior_bias: (logits per anchor,) initial bias of the class logits, the same for
                every anchor shape; None for detectron2's, -log((1 - pi) / pi) everywhere.
            cls_loss: the ClassificationLoss the logits are for (LazyConfig:
                `cls_loss="${..cls_loss}"`): then num_classes is the number of classes K, and
                the logits per anchor and prior_bias come from the loss, as from_config does.
            kwargs: detectron2's RetinaNetHead's; num_classes is the logits per anchor.
        """
        if cls_loss is not None:
            num_classes = kwargs["num_classes"]
            kwargs["num_classes"] = cls_loss.logits_per_anchor(num_classes)
            if prior_bias is None:
                prior_bias = cls_loss.prior_bias(num_classes, kwargs.get("prior_prob", 0.01))
        super().__init__(**kwargs)
        if prior_bias is not None:
            num_anchors = self.cls_score.out_channels // len(prior_bias)
            with torch.no_grad():
                # Channels are (anchor, logit), anchor-major: see permute_to_N_HWA_K.
                self.cls_score.bias.copy_(prior_bias.repeat(num_anchors))

    @classmethod
    def check_config(cls, cfg, check):
        """Call check(ok, key, value, allowed) for each key it reads (see check_config_value)."""
        retinanet = cfg.MODEL.RETINANET
        check(
            0 < retinanet.PRIOR_PROB < 1,
            "MODEL.RETINANET.PRIOR_PROB",
            retinanet.PRIOR_PROB,
            "use a probability strictly between 0 and 1 (the paper uses 0.01)",
        )
        check(
            retinanet.NUM_CONVS >= 1,
            "MODEL.RETINANET.NUM_CONVS",
            retinanet.NUM_CONVS,
            "use 1 or more (the paper: 4)",
        )
        check(
            retinanet.NUM_CLASSES >= 1,
            "MODEL.RETINANET.NUM_CLASSES",
            retinanet.NUM_CLASSES,
            "use 1 or more",
        )

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        cls.check_config(cfg, check_config_value)
        ret = super().from_config(cfg, input_shape)
        cls_loss = build_cls_loss(cfg)
        num_classes = cfg.MODEL.RETINANET.NUM_CLASSES
        ret["num_classes"] = cls_loss.logits_per_anchor(num_classes)
        ret["prior_bias"] = cls_loss.prior_bias(num_classes, cfg.MODEL.RETINANET.PRIOR_PROB)
        return ret
