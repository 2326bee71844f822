"""
Where a training run of configs/sparse.yaml spends its time, to tell which levers could shorten
a run (issue 20): the data loader, the model's step, the convolutions in it, channels_last
memory format, and one evaluation against the iterations between two evaluations.

    python bench/bench_sparse_iteration.py [--threads 1] [--batches 8] [--rounds 3] [--eval]
        [KEY VALUE ...]      # config overrides, as train_net.py

It builds train_net.py's trainer (so the pretrained backbone must exist: the error says how
to make it), times the same batches in both memory formats, alternately (median of --rounds), and profiles
one round with torch.profiler; all ratios are measured in this run.
"""
import argparse
import os
import statistics
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import train_net  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=os.path.join(REPO, "configs", "sparse.yaml"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a grid runs 1 per job)")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--eval", action="store_true", help="also time one evaluation of the test set")
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train_args = train_net.argument_parser().parse_args(
        ["--config-file", args.config_file, "OUTPUT_DIR", "/tmp/bench_sparse_iteration", *args.opts]
    )
    cfg = train_net.setup(train_args)
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    model, optimizer = trainer.model, trainer.optimizer

    def step(batch):
        loss = sum(model(batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    backbone_forward = model.backbone.forward

    def use_format(memory_format):
        model.to(memory_format=memory_format)
        model.backbone.forward = lambda x: backbone_forward(x.contiguous(memory_format=memory_format))

    def seconds_per_iteration(batches):
        start = time.perf_counter()
        for batch in batches:
            step(batch)
        return (time.perf_counter() - start) / len(batches)

    formats = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    with EventStorage(0):
        loader = iter(trainer.data_loader)
        start = time.perf_counter()
        batches = [next(loader) for _ in range(args.batches)]
        data = (time.perf_counter() - start) / args.batches
        step(batches[0])  # warm-up: first-call allocations and compilation
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            seconds_per_iteration(batches)
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        conv = sum(e.self_cpu_time_total for e in events if "convolution" in e.key or "conv2d" in e.key)
        # Alternately, round after round, so that both formats see the same machine state.
        times = {name: [] for name in formats}
        for _ in range(args.rounds):
            for name, memory_format in formats.items():
                use_format(memory_format)
                step(batches[0])
                times[name].append(seconds_per_iteration(batches))
        use_format(torch.contiguous_format)
    contiguous, channels_last = (statistics.median(times[name]) for name in formats)

    step_and_data = contiguous + data
    print(f"{cfg.SOLVER.IMS_PER_BATCH} images per iteration, {args.threads} thread(s):")
    print(f"  data loader      {data:.3f} s/iteration ({data / step_and_data:.0%} of an iteration)")
    print(f"  model step       {contiguous:.3f} s/iteration, of which convolutions (forward and "
          f"backward) {conv / total:.0%} of the profiled time")
    print(f"  channels_last    {channels_last:.3f} s/iteration: {contiguous / channels_last:.2f}x the "
          f"default format's speed")
    if args.eval:
        start = time.perf_counter()
        trainer.test(cfg, model)
        seconds = time.perf_counter() - start
        between = cfg.TEST.EVAL_PERIOD * step_and_data
        print(f"  one evaluation   {seconds:.1f} s, against {between:.0f} s of training between two "
              f"evaluations (TEST.EVAL_PERIOD {cfg.TEST.EVAL_PERIOD}): {seconds / (seconds + between):.0%} "
              "of a run")


if __name__ == "__main__":
    main()
