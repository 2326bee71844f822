"""
A stand-in for ImageNet pretraining, for the CPU-sized backbone of configs/sparse.yaml.

The paper (and every detectron2 user) fine-tunes a backbone pretrained on ImageNet
classification; training it from scratch on the detection data tangles how the backbone learns
with how the classifier copes with the imbalance. Here the same ResNet is first trained to say
which (shape, colour) pairs an image holds: 10 shapes x 8 colours = 80 labels, multi-label
(sigmoid BCE), on images that the built-in data sets' generator draws with its textured
backgrounds, 1 to 6 objects of 12-64 px, all 80 pairs equally likely. So the features it learns
are those the detection data needs (edges and shapes at several scales, colours, clutter), as
ImageNet's features are for COCO, while the task is a classification of whole images and
nothing of it is the detection data: every pretraining image comes from seeds
PRETRAIN_SEED_BASE + n, which no built-in split uses (those use seeds 0 and 1), and the labels
include the four shapes that are only distractors there.

The weights are written under $DETECTRON2_DATASETS/pretrained/ (cached, like the built-in
data) with detectron2's key names (backbone.bottom_up.*; backbone.* with the FPN, which
pretrain_backbone(with_fpn=True) trains too, pooling every level), so MODEL.WEIGHTS
"retina_pretrained://<file>" loads them into FocalRetinaNet, the FPN and head new. Made once by
tools/pretrain_backbone.py.
"""
import hashlib
import logging
import math
import os
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.utils.file_io import PathHandler, PathManager

from .checkpoint import CheckpointError, _write_atomically
from .data.builtin import BUILTIN_SETS, datasets_root
from .data.synthetic import COLORS, MORE_SHAPES, SHAPES, make_grid_categories, render_image

logger = logging.getLogger(__name__)

PRETRAIN_PREFIX = "retina_pretrained://"
# Pretraining images come from seeds PRETRAIN_SEED_BASE + (seed, batch) : never a built-in split's.
PRETRAIN_SEED_BASE = 1000
PRETRAIN_STYLES = make_grid_categories(SHAPES + MORE_SHAPES, list(COLORS))
PRETRAIN_COMMAND = "python tools/pretrain_backbone.py --config-file <the config that names it>"


def pretrained_root():
    """Where pretrained backbones are made and cached: $DETECTRON2_DATASETS/pretrained."""
    return os.path.join(datasets_root(), "pretrained")


# The backbones the measured results in docs/ used, kept in the repository: the pretraining is
# seeded, but another CPU's float arithmetic makes another file (two machines gave held-out
# losses 4.86 and 4.47), and results from two backbones do not compare.
REPOSITORY_PRETRAINED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pretrained")


def pretrained_path(url):
    """The file a retina_pretrained:// URL is made into (tools/pretrain_backbone.py)."""
    return os.path.join(pretrained_root(), url[len(PRETRAIN_PREFIX):])


def resolve_pretrained(url):
    """The file a retina_pretrained:// URL loads: the one made here, else the repository's copy,
    else None."""
    for local in (pretrained_path(url), os.path.join(REPOSITORY_PRETRAINED, url[len(PRETRAIN_PREFIX):])):
        if os.path.isfile(local):
            return local
    return None


def file_sha256(path, length=16):
    """The first `length` hex digits of a file's SHA-256: which backbone a run started from."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


class PretrainedBackboneHandler(PathHandler):
    """retina_pretrained://NAME: the file NAME made here or kept in the repository, or an error
    naming the command that makes it."""

    def _get_supported_prefixes(self):
        return [PRETRAIN_PREFIX]

    def _get_local_path(self, path, **kwargs):
        local = resolve_pretrained(path)
        if local is None:
            raise CheckpointError(
                f"MODEL.WEIGHTS {path!r} is a pretrained backbone that has not been made here "
                f"(no {pretrained_path(path)}). Make it once with `{PRETRAIN_COMMAND}` (about 20 "
                f"minutes on 2 CPU cores; it is cached for every later run), or set MODEL.WEIGHTS "
                f"\"\" to train from scratch with MODEL.RESNETS.NORM BN."
            )
        return local

    def _open(self, path, mode="r", **kwargs):
        return open(self._get_local_path(path), mode)

    def _isfile(self, path, **kwargs):
        return resolve_pretrained(path) is not None

    def _exists(self, path, **kwargs):
        return resolve_pretrained(path) is not None


PathManager.register_handler(PretrainedBackboneHandler())


def require_pretrained(weights, required=True):
    """If `weights` is a retina_pretrained:// file, the line that says which file it is, with
    its SHA-256 (the ablation runner keeps it with the run's result); when it is not made yet,
    the handler's CheckpointError (the command that makes it) if `required`, else None."""
    if weights.startswith(PRETRAIN_PREFIX) and (required or resolve_pretrained(weights)):
        local = PathManager.get_local_path(weights)
        return f"Pretrained backbone: {weights} is {local} (sha256 {file_sha256(local)})"
    return None


def _check_disjoint_seeds():
    used = {seed for spec in BUILTIN_SETS.values() for _, seed in spec.splits.values()}
    assert max(used) < PRETRAIN_SEED_BASE, f"a built-in split uses seed {max(used)} >= {PRETRAIN_SEED_BASE}"


def pretraining_batch(seed, index, batch_size, image_size, pixel_mean, pixel_std):
    """
    Batch `index` of the pretraining stream `seed`: (images (B, 3, H, W) normalised as the
    detector's inputs, BGR; targets (B, 80) multi-hot over PRETRAIN_STYLES). The same
    arguments give the same batch.
    """
    rng = np.random.default_rng([PRETRAIN_SEED_BASE + seed, index])
    images = np.empty((batch_size, image_size, image_size, 3), np.float32)
    targets = torch.zeros((batch_size, len(PRETRAIN_STYLES)))
    for b in range(batch_size):
        image, annotations = render_image(
            rng, PRETRAIN_STYLES, (image_size, image_size), objects=(1, 6), distractors=(0, 0),
            sizes=(12, 64), empty_prob=0.0,
        )
        array = np.asarray(image, np.float32)[:, :, ::-1]  # RGB -> BGR, detectron2's INPUT.FORMAT
        images[b] = array[:, ::-1] if rng.random() < 0.5 else array  # horizontal flip
        for category, _ in annotations:
            targets[b, category] = 1.0
    mean = torch.tensor(pixel_mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(pixel_std, dtype=torch.float32).view(1, 3, 1, 1)
    return (torch.from_numpy(images).permute(0, 3, 1, 2) - mean) / std, targets


class ImageClassifier(nn.Module):
    """The detector's backbone under a multi-label classifier: global average pooling of the
    bottom-up ResNet's last stage (with `with_fpn`: of every FPN level, concatenated, so the
    FPN learns too) and a linear layer of `num_labels` logits."""

    def __init__(self, backbone, num_labels, with_fpn=False):
        super().__init__()
        self.backbone = backbone
        self.with_fpn = with_fpn
        shapes = self.pretrained_part().output_shape()
        self.features = list(shapes) if with_fpn else [backbone.bottom_up._out_features[-1]]
        self.linear = nn.Linear(sum(shapes[k].channels for k in self.features), num_labels)

    def pretrained_part(self):
        """The module whose weights pretraining keeps: the FPN backbone, or its ResNet."""
        return self.backbone if self.with_fpn else self.backbone.bottom_up

    def pretrained_weights(self):
        """Its weights under the detector's key names (backbone.*), FrozenBN's absent counters aside."""
        prefix = "backbone." if self.with_fpn else "backbone.bottom_up."
        return {
            prefix + k: v.detach().clone()
            for k, v in self.pretrained_part().state_dict().items()
            if not k.endswith("num_batches_tracked")  # FrozenBN, which fine-tuning uses, has none
        }

    def forward(self, images):
        features = self.pretrained_part()(images)
        return self.linear(torch.cat([F.adaptive_avg_pool2d(features[k], 1).flatten(1) for k in self.features], 1))


def pretraining_cfg(cfg):
    """The backbone config of `cfg` as pretraining trains it: BatchNorm, nothing frozen."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.WEIGHTS = ""
    return cfg


def multilabel_loss(logits, targets):
    """BCE summed over the labels, averaged over the images: a mean over the 80 labels too
    would shrink every label's gradient 80-fold, and the backbone hardly learns."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / len(targets)


@torch.no_grad()
def evaluate_classifier(model, batches):
    """(mean loss per image, share of images whose label set is predicted exactly, mean per-label accuracy)."""
    model.eval()
    losses, exact, correct, count = [], 0, 0.0, 0
    for images, targets in batches:
        logits = model(images)
        losses.append(multilabel_loss(logits, targets).item())
        predicted = (logits > 0).float()
        exact += int((predicted == targets).all(dim=1).sum())
        correct += float((predicted == targets).float().mean(dim=1).sum())
        count += len(targets)
    model.train()
    return float(np.mean(losses)), exact / count, correct / count


def pretrain_backbone(cfg, output, iterations=12000, batch_size=32, base_lr=0.02, seed=0,
                      image_size=96, eval_batches=8, progress=True, with_fpn=False):
    """
    Train cfg's backbone (its bottom-up ResNet) on the pretraining task and write its weights
    to `output` (atomically): {"model": backbone.bottom_up.* weights, "pretraining": what made
    them and their held-out accuracy}. SGD with momentum 0.9, weight decay 1e-4, linear warmup
    over the first 5% then a cosine decay from `base_lr`. Seeded: the same arguments give the
    same file. Returns the "pretraining" record.
    """
    from detectron2.modeling import build_backbone
    from tqdm import tqdm

    _check_disjoint_seeds()
    cfg = pretraining_cfg(cfg)
    torch.manual_seed(seed)
    model = ImageClassifier(build_backbone(cfg), len(PRETRAIN_STYLES), with_fpn=with_fpn)
    divisibility = model.backbone.size_divisibility if with_fpn else 1
    if divisibility > 1 and image_size % divisibility:
        raise ValueError(f"image size {image_size}: the FPN needs a multiple of {divisibility}")
    optimizer = torch.optim.SGD(model.parameters(), lr=base_lr, momentum=0.9, weight_decay=1e-4)
    warmup = max(1, iterations // 20)

    def lr_at(it):
        if it < warmup:
            return base_lr * (it + 1) / warmup
        return 0.5 * base_lr * (1 + math.cos(math.pi * (it - warmup) / max(1, iterations - warmup)))

    def batch(stream, index):
        return pretraining_batch(stream, index, batch_size, image_size, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD)

    # Held out: another stream of the same seed range, never trained on.
    held_out = [batch(seed + 500, i) for i in range(eval_batches)]
    start = time.perf_counter()
    bar = tqdm(range(iterations), desc="pretraining the backbone", disable=not progress, mininterval=5)
    for it in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(it)
        images, targets = batch(seed, it)
        loss = multilabel_loss(model(images), targets)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"pretraining loss became {loss.item()} at iteration {it}: lower --lr")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if it % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr_at(it):.4f}")
        if (it + 1) % 500 == 0:
            logger.info(f"iteration {it + 1}: held-out loss {evaluate_classifier(model, held_out)[0]:.3f}")
    bce, exact, label_accuracy = evaluate_classifier(model, held_out)
    # What knowing only each label's frequency scores: the loss a backbone that learnt nothing reaches.
    targets = torch.cat([t for _, t in held_out])
    frequency = targets.mean(0).clamp(1e-6, 1 - 1e-6)
    baseline = float(multilabel_loss(torch.logit(frequency).expand_as(targets), targets))
    record = {
        "task": f"multi-label classification of {len(PRETRAIN_STYLES)} (shape, colour) pairs",
        "iterations": iterations, "batch_size": batch_size, "base_lr": base_lr, "seed": seed, "with_fpn": with_fpn,
        "image_size": image_size, "held_out_images": eval_batches * batch_size,
        "held_out_loss": bce, "held_out_loss_of_the_label_frequencies": baseline, "held_out_exact_match": exact, "held_out_label_accuracy": label_accuracy,
        "seconds": time.perf_counter() - start,
        "resnet": {"depth": cfg.MODEL.RESNETS.DEPTH, "stem_out_channels": cfg.MODEL.RESNETS.STEM_OUT_CHANNELS,
                   "res2_out_channels": cfg.MODEL.RESNETS.RES2_OUT_CHANNELS},
    }
    weights = model.pretrained_weights()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    _write_atomically(output, lambda f: torch.save({"model": weights, "pretraining": record}, f))
    logger.info(f"Pretrained backbone written to {output}: {record}")
    return record
