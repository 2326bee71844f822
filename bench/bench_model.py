"""
Benchmarks 2 and 3 of issue 4: FocalRetinaNet against detectron2's built-in RetinaNet, same
config (configs/retina_r50.yaml: R-50-FPN, the paper's head and anchors), same weights.

    python bench/bench_model.py train [--rounds 5] [--device cpu]   # 2 images of 512 x 640
    python bench/bench_model.py infer [--rounds 5] [--device cpu]   # 1 image of 640 x 800

The two models run alternately, round after round, so that both see the same machine state;
each prints the median over rounds, per stage for training (backbone, head, matching, loss,
backward) and the ratio built-in / ours measured in this run.
"""
import argparse
import os
import statistics
import sys
import time

import torch

from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import retina_plugin

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("backbone", "head", "matching", "loss", "backward")


def build(meta_architecture, device):
    cfg = get_cfg()
    retina_plugin.add_retina_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "retina_r50.yaml"))
    cfg.MODEL.META_ARCHITECTURE = meta_architecture
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = device
    return build_model(cfg)


def make_batch(num_images, height, width, seed=0, boxes_per_image=20):
    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(num_images):
        xy = torch.rand(boxes_per_image, 2, generator=g) * torch.tensor([width * 0.8, height * 0.8])
        wh = 16 + torch.rand(boxes_per_image, 2, generator=g) * torch.tensor([width * 0.3, height * 0.3])
        instances = Instances((height, width))
        instances.gt_boxes = Boxes(torch.cat([xy, (xy + wh).clamp(max=torch.tensor([width, height]))], 1))
        instances.gt_classes = torch.randint(0, 80, (boxes_per_image,), generator=g)
        image = torch.randint(0, 256, (3, height, width), generator=g).float()
        batch.append({"image": image, "instances": instances, "height": height, "width": width})
    return batch


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train_step_by_stage(model, batch, device):
    """One training iteration of a RetinaNet, split into the stages of forward_training."""
    times = {}
    model.zero_grad(set_to_none=True)
    sync(device)
    start = time.perf_counter()

    def lap(name):
        nonlocal start
        sync(device)
        now = time.perf_counter()
        times[name] = now - start
        start = now

    with EventStorage():
        images = model.preprocess_image(batch)
        features = model.backbone(images.tensor)
        features = [features[f] for f in model.head_in_features]
        lap("backbone")
        predictions = model.head(features)
        lap("head")
        gt_instances = [x["instances"].to(model.device) for x in batch]
        logits, deltas = model._transpose_dense_predictions(predictions, [model.num_classes, 4])
        anchors = model.anchor_generator(features)
        gt_labels, gt_boxes = model.label_anchors(anchors, gt_instances)
        lap("matching")
        losses = model.losses(anchors, logits, gt_labels, deltas, gt_boxes)
        lap("loss")
        sum(losses.values()).backward()
        lap("backward")
    return times


def infer(model, batch, device):
    sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        model(batch)
    sync(device)
    return {"inference": time.perf_counter() - start}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["train", "infer"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="autocast to float16 (CUDA) / bfloat16 (CPU)")
    args = parser.parse_args()

    torch.manual_seed(0)
    models = {"builtin RetinaNet": build("RetinaNet", args.device)}
    models["FocalRetinaNet"] = build("FocalRetinaNet", args.device)
    models["FocalRetinaNet"].load_state_dict(models["builtin RetinaNet"].state_dict())
    if args.mode == "train":
        batch, run, stages = make_batch(2, 512, 640), train_step_by_stage, STAGES
        for model in models.values():
            model.train()
    else:
        batch, run, stages = make_batch(1, 640, 800), infer, ("inference",)
        for model in models.values():
            model.eval()
        for x in batch:
            del x["instances"]
    amp_dtype = torch.float16 if args.device.startswith("cuda") else torch.bfloat16
    autocast = torch.autocast(args.device.split(":")[0], dtype=amp_dtype, enabled=args.amp)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}"
          f"{', AMP ' + str(amp_dtype) if args.amp else ''}; {args.mode}, R-50-FPN, "
          f"{len(batch)} image(s) of {batch[0]['height']}x{batch[0]['width']}")
    results = {name: [] for name in models}
    with autocast:
        for name, model in models.items():  # warm up (the compiled loss compiles here)
            run(model, batch, args.device)
        for round_ in range(args.rounds):
            for name, model in models.items():
                results[name].append(run(model, batch, args.device))
                print(f"  round {round_}: {name}: {sum(results[name][-1].values()):.3f} s", file=sys.stderr)

    medians = {
        name: {s: statistics.median(r[s] for r in runs) for s in stages}
        for name, runs in results.items()
    }
    totals = {name: statistics.median(sum(r.values()) for r in runs) for name, runs in results.items()}
    print(f"{'stage':>12} " + " ".join(f"{name:>18}" for name in models) + f" {'builtin/ours':>13}")
    for stage in (*stages, "total") if len(stages) > 1 else ("total",):
        row = [medians[n][stage] if stage != "total" else totals[n] for n in models]
        print(f"{stage:>12} " + " ".join(f"{v * 1e3:16.1f}ms" for v in row) + f" {row[0] / row[1]:12.2f}x")


if __name__ == "__main__":
    main()
