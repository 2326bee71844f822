"""
Runs that differ only in their learning-rate schedule share their first iterations.

With the same config, seed and data, SOLVER.MAX_ITER and SOLVER.STEPS change nothing until the
learning rate of one run first differs from the other's: up to there both runs train the same
batches with the same learning rate, and write the same checkpoints. The schedule grid trains
each cell at 3000 iterations beside 6000 (and 6000 beside 12000): the longer run's first 2500
iterations are the shorter run's. So a run starts from a checkpoint of such a sibling inside
the shared prefix, rewritten into the checkpoint the run itself would have written there, and
the plugin's exact resume (data order, random states, loss normaliser) continues it as an
uninterrupted run. tests/test_prefix.py trains a run both ways and compares the weights.

What a checkpoint holds that depends on the schedule is the learning rate the optimizer will
use next: detectron2's LRScheduler hook steps after each iteration, so the checkpoint written
after iteration k carries the rate of iteration k + 1 (for a 3000-iteration run at k = 2499,
already divided by 10). That one value is recomputed from this run's schedule.

Older trainers wrote a checkpoint before the evaluation at its iteration, which then drew from
the random states: such a checkpoint's states are moved past the evaluation by replaying its
draws (replay_evaluation). On the FL seed-0 runs of docs/ablations/schedule/, the 6000-iteration
run's checkpoint at 3999 (written before) replayed equals, state for state, the one the
12000-iteration run wrote after its evaluation there.
"""
import json
import os
import re
import warnings
from typing import List, Optional, Sequence, Tuple

from .configs import config_differences, saved_config

# Keys that shape the learning rate over the iterations and nothing else.
SCHEDULE_KEYS = frozenset(
    f"SOLVER.{key}" for key in (
        "MAX_ITER", "STEPS", "GAMMA", "WARMUP_FACTOR", "WARMUP_ITERS", "WARMUP_METHOD",
        "LR_SCHEDULER_NAME", "BASE_LR_END", "NUM_DECAYS", "RESCALE_INTERVAL",
    )
)
CHECKPOINT = re.compile(r"model_(\d{7})\.pth$")
# Written into a run's directory when it starts from another run's checkpoint; the runner puts it
# into the run's Result, the report says it.
PREFIX_FILE = "shared_prefix.json"


def lr_multipliers(cfg, iterations: int) -> List[float]:
    """The learning-rate multiplier of iterations 0 .. iterations - 1 under `cfg`'s schedule,
    from detectron2's own scheduler (the trainer's), stepped as its LRScheduler hook steps it."""
    import torch
    from detectron2.solver import build_lr_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_lr_scheduler(cfg, optimizer)
    multipliers = []
    with warnings.catch_warnings():  # stepped without optimizer.step(): nothing is trained here
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(iterations):
            multipliers.append(optimizer.param_groups[0]["lr"])
            scheduler.step()
    return multipliers


def checkpoints(run_dir) -> List[Tuple[int, str]]:
    """[(iteration, path)] of the periodic checkpoints in a run's directory, in order."""
    found = []
    for name in os.listdir(run_dir) if os.path.isdir(run_dir) else ():
        match = CHECKPOINT.match(name)
        if match:
            found.append((int(match.group(1)), os.path.join(run_dir, name)))
    return sorted(found)


def cell_dirs_under(output_dirs: Sequence[str]) -> List[str]:
    """The run directories (cells/<key>) under ablation output directories."""
    found = []
    for output_dir in output_dirs:
        cells = os.path.join(output_dir, "cells")
        found += [os.path.join(cells, name) for name in sorted(os.listdir(cells))] if os.path.isdir(cells) else []
    return found


def _with_schedule_of(cfg, config_file, keys):
    """`cfg` with the values of the schedule `keys` taken from another run's config.yaml."""
    theirs = saved_config(config_file)
    other = cfg.clone()
    other.defrost()
    other.merge_from_list([item for key in keys for item in (key, theirs[key])])
    return other


def shared_checkpoint(cfg, run_dirs: Sequence[str]) -> Optional[Tuple[str, int, str]]:
    """(run directory, iteration k, checkpoint path): the latest checkpoint of a run in
    `run_dirs` whose config differs from `cfg` only in schedule keys and whose learning rate
    equalled `cfg`'s through iteration k, so that iterations 0 .. k are this run's; or None."""
    max_iter = cfg.SOLVER.MAX_ITER
    ours = None
    best = None
    for run in run_dirs:
        config_file = os.path.join(run, "config.yaml")
        saved = checkpoints(run)
        if not saved or not os.path.isfile(config_file):
            continue
        keys = config_differences(config_file, cfg)
        # No difference: the same run, which --reuse-from takes whole, not a prefix of it.
        if not keys or not set(keys) <= SCHEDULE_KEYS:
            continue
        ours = ours or lr_multipliers(cfg, max_iter)
        their_cfg = _with_schedule_of(cfg, config_file, keys)
        # Up to the shorter schedule's end: detectron2's scheduler ends with its run.
        theirs = lr_multipliers(their_cfg, min(max_iter, their_cfg.SOLVER.MAX_ITER))
        shared = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), len(theirs))
        # Iteration k's checkpoint is this run's if iterations 0 .. k had the same rate; it
        # must leave iterations to train.
        usable = [(k, path) for k, path in saved if k < shared and k < max_iter - 1]
        for k, path in reversed(usable):
            if best is not None and k <= best[1]:
                break
            if _random_states_of(path, k, cfg.TEST.EVAL_PERIOD, their_cfg.SOLVER.MAX_ITER) is not None:
                best = (run, k, path)
                break
    return best


def _evaluated_at(iteration, eval_period, max_iter) -> bool:
    return eval_period > 0 and ((iteration + 1) % eval_period == 0 or iteration == max_iter - 1)


def _random_states_of(path, iteration, eval_period, max_iter) -> Optional[str]:
    """How the checkpoint after `iteration` gives the random states iteration + 1 draws from:
    "exact" (no evaluation ran at that iteration, or the checkpoint was written after it),
    "replay" (an older trainer wrote it before the evaluation: replay_evaluation moves them
    past it), or None (it holds no random states: a resume from it would draw other flips)."""
    import torch

    if not _evaluated_at(iteration, eval_period, max_iter):
        return "exact"
    states = torch.load(path, map_location="cpu", weights_only=True).get("random_states")
    if not states:
        return None
    return "exact" if states.get("after_evaluation", False) else "replay"


def replay_evaluation(random_states, cfg):
    """
    `random_states` (a checkpoint's RandomStates, written before its iteration's evaluation by
    an older trainer) moved past that evaluation: restored, the test loaders iterated as the
    evaluation iterates them, read back. That is where the evaluation draws: each loader's
    iterator draws a torch seed, the test resize an np.random.choice per image; the model in
    eval mode and the COCO evaluation draw nothing. This process's own states are put back.
    """
    from retina_plugin.checkpoint import RandomStates
    from retina_plugin.data import build_checked_test_loader

    own = RandomStates().state_dict()
    try:
        RandomStates().load_state_dict(random_states)
        for name in cfg.DATASETS.TEST:
            for _ in build_checked_test_loader(cfg, name):
                pass
        return RandomStates(after_evaluation=True).state_dict()
    finally:
        RandomStates().load_state_dict(own)


def start_from_shared_prefix(directory, cfg, run_dirs: Sequence[str], out_dir) -> Optional[str]:
    """
    Before a run trains in `directory` (no checkpoint there yet): if a run in `run_dirs` shares
    its first iterations (shared_checkpoint), write that checkpoint there as this run's own,
    with the metrics of those iterations, so that train_net.py --resume continues from it.
    Returns a line for the log, or None when nothing is shared.
    """
    import torch

    if os.path.isfile(os.path.join(directory, "last_checkpoint")):
        return None  # the run's own checkpoint: it resumes from that
    found = shared_checkpoint(cfg, run_dirs)
    if found is None:
        return None
    run, iteration, path = found
    state = torch.load(path, map_location="cpu", weights_only=True)
    donor_max_iter = saved_config(os.path.join(run, "config.yaml"))["SOLVER.MAX_ITER"]
    replayed = ""
    # Written before its iteration's evaluation (shared_checkpoint took it: it has random states).
    if _evaluated_at(iteration, cfg.TEST.EVAL_PERIOD, donor_max_iter) and not state["random_states"].get("after_evaluation", False):
        try:
            state["random_states"] = replay_evaluation(state["random_states"], cfg)
        except Exception as e:  # a test set this process cannot load: the run trains from the start
            return (f"trains from the start: the evaluation after iteration {iteration} of {os.path.relpath(run, out_dir)} "
                    f"could not be replayed to move its checkpoint's random states past it ({type(e).__name__}: {e})")
        replayed = ", its random states moved past the evaluation it was written before"
    try:
        base_lrs = state["trainer"]["hooks"]["LRScheduler"]["base_lrs"]
        groups = state["trainer"]["_trainer"]["optimizer"]["param_groups"]
    except (KeyError, TypeError):
        return None  # not a checkpoint of detectron2's DefaultTrainer: train from the start
    # The rate of the next iteration, as LRMultiplier.get_lr computes it: base_lr * multiplier.
    multiplier = lr_multipliers(cfg, iteration + 2)[iteration + 1]
    for group, base_lr in zip(groups, base_lrs):
        group["lr"] = base_lr * multiplier
    os.makedirs(directory, exist_ok=True)
    name = os.path.basename(path)
    torch.save(state, os.path.join(directory, name + ".partial"))
    os.replace(os.path.join(directory, name + ".partial"), os.path.join(directory, name))
    with open(os.path.join(run, "metrics.json")) as f:
        records = [line for line in f if _iteration_of(line) is not None and _iteration_of(line) <= iteration]
    with open(os.path.join(directory, "metrics.json"), "w") as f:
        f.writelines(records)
    source = os.path.relpath(run, out_dir)
    with open(os.path.join(directory, PREFIX_FILE), "w") as f:
        json.dump({"from": source, "iteration": iteration}, f)
    with open(os.path.join(directory, "last_checkpoint"), "w") as f:
        f.write(name)
    return (f"iterations 0 to {iteration} are those of {source} (the same config and learning rate "
            f"until then): starts from its checkpoint {name}{replayed}")


def _iteration_of(line) -> Optional[int]:
    try:
        return int(json.loads(line)["iteration"])
    except (ValueError, KeyError, TypeError):
        return None


_ITERATIONS_SEP = ", iterations "  # shared_prefix_of's '<run>, iterations 0-k'


def shared_prefix_of(directory) -> Optional[str]:
    """'<run>, iterations 0-k' if the run in `directory` started from another run's checkpoint."""
    path = os.path.join(directory, PREFIX_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        prefix = json.load(f)
    return f"{prefix['from']}{_ITERATIONS_SEP}0-{prefix['iteration']}"


def shared_prefix_run(text: str) -> Optional[str]:
    """The <run> of shared_prefix_of's '<run>, iterations 0-k'; None if `text` is not one."""
    run, sep, _ = text.rpartition(_ITERATIONS_SEP)
    return run if sep else None


def rebase_shared_prefix(text: str, from_dir, to_dir) -> str:
    """shared_prefix_of's '<run>, iterations 0-k', <run> relative to `from_dir`, rewritten
    with <run> relative to `to_dir`: a run reused by another output directory must still name
    the run it started from as seen from there."""
    run = shared_prefix_run(text)
    if run is None:
        return text
    return os.path.relpath(os.path.join(from_dir, run), to_dir) + text[len(run):]
