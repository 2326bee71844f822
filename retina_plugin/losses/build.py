from ..registry import NamedRegistry

CLS_LOSS_REGISTRY = NamedRegistry("CLS_LOSS")
CLS_LOSS_REGISTRY.__doc__ = """
Registry for RetinaNet classification losses, selected by MODEL.RETINANET.CLS_LOSS_TYPE.

A registered object is called as `obj(cfg)` and returns a module that is called as
`loss(pred_logits, gt_labels)` with pred_logits (N, R, K) over all R anchors of all levels and
gt_labels (N, R) integer: a class in [0, K), K for background, -1 for ignored anchors.
It returns the loss summed over anchors; the meta-architecture divides by the normaliser.
"""


def build_cls_loss(cfg):
    """Build the classification loss named by cfg.MODEL.RETINANET.CLS_LOSS_TYPE."""
    name = cfg.MODEL.RETINANET.CLS_LOSS_TYPE
    return CLS_LOSS_REGISTRY.get_by_config("MODEL.RETINANET.CLS_LOSS_TYPE", name)(cfg)
