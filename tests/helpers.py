"""Tiny configs and inputs shared by the tests."""
import os

import torch

from detectron2.config import get_cfg
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import retina_plugin

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_cfg(meta_architecture="FocalRetinaNet", num_classes=3):
    """The plugin's base config, shrunk to a model that runs in well under a second on a CPU."""
    cfg = get_cfg()
    retina_plugin.add_retina_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "Base-FocalRetinaNet.yaml"))
    cfg.MODEL.META_ARCHITECTURE = meta_architecture
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64  # R18 needs 64
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.RETINANET.NUM_CONVS = 2
    cfg.MODEL.RETINANET.NUM_CLASSES = num_classes
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[8, 10], [16, 20], [32, 40], [64, 80], [128, 160]]
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
    return cfg


def tiny_batch(num_classes=3, seed=0, sizes=((96, 128), (80, 112))):
    """Images of random pixels with random boxes: a list of detectron2 model inputs."""
    g = torch.Generator().manual_seed(seed)
    batch = []
    for height, width in sizes:
        image = torch.randint(0, 256, (3, height, width), generator=g).float()
        num_boxes = 4
        xy = torch.rand(num_boxes, 2, generator=g) * torch.tensor([width * 0.6, height * 0.6])
        wh = 8 + torch.rand(num_boxes, 2, generator=g) * torch.tensor([width * 0.4, height * 0.4])
        instances = Instances((height, width))
        instances.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
        instances.gt_classes = torch.randint(0, num_classes, (num_boxes,), generator=g)
        batch.append({"image": image, "instances": instances, "height": height, "width": width})
    return batch


def train_step(model, batch):
    """One forward and backward in training mode: (losses, gradients by name, EventStorage)."""
    model.train()
    model.zero_grad()
    with EventStorage() as storage:
        losses = model(batch)
        sum(losses.values()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return losses, grads, storage
