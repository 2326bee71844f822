"""
Benchmark 1 of issue 4: the focal loss, forward + backward, against fvcore and torchvision;
with --family, the losses after the paper (QFL, VFL, Poly-1), each fused op (compiled and eager)
against the plain PyTorch version of itself.

    python bench/bench_loss.py [--sizes 50000 200000 800000] [--classes 80] [--repeats 7]
        [--device cpu|cuda] [--dtype float32|float16|bfloat16] [--family]

For each anchors x classes it prints the median time of forward + backward (sum reduction) of
- ours: retina_plugin.sigmoid_focal_loss, compiled and eager, on integer labels;
- fvcore: sigmoid_focal_loss_jit (what detectron2's RetinaNet calls) on one-hot targets;
- torchvision: ops.sigmoid_focal_loss on one-hot targets;
- copy: one clone of the logits, the memory-bandwidth floor;
with the peak memory each allocates beyond its inputs, and ratios against fvcore, all measured
in this run. The one-hot targets of fvcore and torchvision are built outside the timing, which
favours them. Inputs: ~1% positives, ~5% ignored anchors, logits as a trained head's.
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from fvcore.nn import sigmoid_focal_loss_jit
from torchvision.ops import sigmoid_focal_loss as torchvision_focal_loss

from retina_plugin.losses import poly1_focal_loss, quality_focal_loss, varifocal_loss
from retina_plugin.ops import sigmoid_focal_loss


def make_inputs(num_anchors, num_classes, device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(num_anchors, num_classes, generator=g) * 2 - 4).to(device, dtype)
    labels = torch.full((num_anchors,), num_classes, dtype=torch.long)
    pick = torch.rand(num_anchors, generator=g)
    positives = pick < 0.01
    labels[positives] = torch.randint(0, num_classes, (int(positives.sum()),), generator=g)
    labels[pick > 0.95] = -1
    return logits, labels.to(device)


def candidates(logits, labels, alpha=0.25, gamma=2.0):
    """name -> (function of a leaf logits tensor that runs forward + backward)."""
    valid = labels >= 0
    one_hot = F.one_hot(labels.clamp(min=0), logits.shape[1] + 1)[:, :-1].to(logits.dtype)
    one_hot[~valid] = 0
    weight = valid.unsqueeze(1).to(logits.dtype)

    def ours(impl):
        return lambda x: sigmoid_focal_loss(x, labels, alpha, gamma, "sum", impl=impl).backward()

    def reference(fn):
        # Ignored anchors masked out by a weight, as cheap as the reference allows.
        return lambda x: (fn(x, one_hot, alpha=alpha, gamma=gamma, reduction="none") * weight).sum().backward()

    return {
        "ours (compiled)": ours("compiled"),
        "ours (eager)": ours("eager"),
        "fvcore jit": reference(sigmoid_focal_loss_jit),
        "torchvision": reference(torchvision_focal_loss),
        "copy (floor)": lambda x: x.detach().clone(),
    }


def family_candidates(logits, labels):
    """name -> forward + backward of QFL, VFL and Poly-1, compiled, eager and plain, on the same inputs."""
    g = torch.Generator().manual_seed(1)
    positive = (labels >= 0) & (labels < logits.shape[1])
    quality = (torch.rand(labels.shape, generator=g).to(logits.device) * positive).to(logits.dtype)
    losses = {
        "QFL": lambda x, impl: quality_focal_loss(x, labels, quality, 2.0, impl=impl),
        "VFL": lambda x, impl: varifocal_loss(x, labels, quality, 0.75, 2.0, impl=impl),
        "Poly-1": lambda x, impl: poly1_focal_loss(x, labels, 0.25, 2.0, 1.0, impl=impl),
    }
    return {
        f"{name} {impl}": (lambda loss, impl: lambda x: loss(x, impl).backward())(loss, impl)
        for name, loss in losses.items()
        for impl in ("compiled", "eager", "plain")
    }


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_time(fn, logits, repeats):
    times = []
    for _ in range(repeats + 1):  # the first run warms up (and compiles)
        x = logits.detach().requires_grad_()
        synchronize(logits.device)
        start = time.perf_counter()
        fn(x)
        synchronize(logits.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def peak_extra_bytes(fn, logits):
    """The most memory `fn` holds at once beyond its inputs, from the allocator's own records."""
    x = logits.detach().requires_grad_()
    fn(x)  # warm up
    x = logits.detach().requires_grad_()
    if logits.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn(x)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(x)
    # Every allocation and free (by an op, or "[memory]" outside one), in time order: the
    # running sum's maximum is the peak.
    records = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events())
    current = peak = 0
    for _, delta in records:
        current += delta
        peak = max(peak, current)
    return peak


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 200_000, 800_000])
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--family", action="store_true", help="QFL, VFL, Poly-1: fused against plain")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, {args.dtype}")
    if device.type == "cuda":
        print(f"GPU: {torch.cuda.get_device_name()}")

    if args.family:
        return main_family(args, device, dtype)
    header = f"{'anchors x classes':>18} {'implementation':>16} {'ms':>9} {'vs fvcore':>10} {'vs copy':>8} {'extra MB':>9} {'fvcore/mem':>10}"
    print(header)
    for num_anchors in args.sizes:
        logits, labels = make_inputs(num_anchors, args.classes, device, dtype)
        results = {}
        for name, fn in candidates(logits, labels).items():
            results[name] = (median_time(fn, logits, args.repeats), peak_extra_bytes(fn, logits))
        fvcore_time, fvcore_bytes = results["fvcore jit"]
        copy_time = results["copy (floor)"][0]
        for name, (seconds, extra) in results.items():
            print(
                f"{num_anchors:>9} x {args.classes:<6} {name:>16} {seconds * 1e3:9.1f} "
                f"{fvcore_time / seconds:9.2f}x {seconds / copy_time:7.2f}x {extra / 2**20:9.1f} "
                f"{fvcore_bytes / max(extra, 1):9.2f}x"
            )


def main_family(args, device, dtype):
    print(f"{'anchors x classes':>18} {'implementation':>16} {'ms':>9} {'plain/this':>10} {'extra MB':>9} {'plain/mem':>10}")
    for num_anchors in args.sizes:
        logits, labels = make_inputs(num_anchors, args.classes, device, dtype)
        results = {name: (median_time(fn, logits, args.repeats), peak_extra_bytes(fn, logits))
                   for name, fn in family_candidates(logits, labels).items()}
        for name, (seconds, extra) in results.items():
            plain_time, plain_bytes = results[name.rsplit(" ", 1)[0] + " plain"]
            print(f"{num_anchors:>9} x {args.classes:<6} {name:>16} {seconds * 1e3:9.1f} "
                  f"{plain_time / seconds:9.2f}x {extra / 2**20:9.1f} {plain_bytes / max(extra, 1):9.2f}x")


if __name__ == "__main__":
    main()
