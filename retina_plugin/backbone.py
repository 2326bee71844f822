from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelP6P7
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, ResNet

from .config import check_config_value

BASIC_BLOCKS_PER_STAGE = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}


@BACKBONE_REGISTRY.register()
def build_retinanet_basic_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """
    ResNet-18/34 of any width with RetinaNet's FPN (P3-P7, P6 and P7 from C5), for models
    small enough for a CPU. detectron2's own builder fixes R-18/34 at 64 channels in res2;
    here MODEL.RESNETS.STEM_OUT_CHANNELS and RES2_OUT_CHANNELS set the widths, doubled at
    each later stage. DEPTH, NORM, OUT_FEATURES, BACKBONE.FREEZE_AT and the FPN keys keep
    their detectron2 meaning.
    """
    resnets = cfg.MODEL.RESNETS
    stem = BasicStem(input_shape.channels, resnets.STEM_OUT_CHANNELS, norm=resnets.NORM)
    stages = basic_resnet_stages(resnets.DEPTH, resnets.STEM_OUT_CHANNELS, resnets.RES2_OUT_CHANNELS, resnets.NORM)
    bottom_up = ResNet(stem, stages, out_features=resnets.OUT_FEATURES).freeze(
        cfg.MODEL.BACKBONE.FREEZE_AT
    )
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(stages[-1][-1].out_channels, cfg.MODEL.FPN.OUT_CHANNELS),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


def basic_resnet_stages(depth, stem_out_channels, res2_out_channels, norm="BN"):
    """
    The four stages of a ResNet-18/34 of any width: res2 with `res2_out_channels`, doubled at
    each later stage (a LazyConfig builds its ResNet with them: configs/lazy/quickstart.py).
    """
    check_config_value(
        depth in BASIC_BLOCKS_PER_STAGE, "MODEL.RESNETS.DEPTH", depth, "the basic ResNet has depth 18 or 34"
    )
    stages = []
    in_channels, out_channels = stem_out_channels, res2_out_channels
    for index, num_blocks in enumerate(BASIC_BLOCKS_PER_STAGE[depth]):
        first_stride = 1 if index == 0 else 2
        stages.append(
            ResNet.make_stage(
                BasicBlock,
                num_blocks,
                in_channels=in_channels,
                out_channels=out_channels,
                stride_per_block=[first_stride] + [1] * (num_blocks - 1),
                norm=norm,
            )
        )
        in_channels, out_channels = out_channels, out_channels * 2
    return stages
