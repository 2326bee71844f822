#!/usr/bin/env python
"""
Run each fault of the reliability issues against a tiny config, through train_net.py as a user
would, and print what happened and whether any data was lost.

    .venv/bin/python tools/inject_faults.py [--keep DIR]

Every fault runs in a fresh folder of a temporary workspace (kept with --keep), on a tiny COCO
data set written there. "Data lost" means: a checkpoint or result that existed before the fault
is gone or broken afterwards, or training work after the last checkpoint is not recoverable.
The faults themselves are in tools/faults/ (files.py, data.py, runs.py).
"""
import argparse
import os
import sys
import tempfile

from faults.common import make_data, trained_checkpoint
from faults.data import (
    fault_bad_category, fault_decompression_bomb, fault_missing_builtin_data, fault_missing_image,
    fault_nonfinite_annotation, fault_nothing_to_train_on,
)
from faults.files import (
    fault_bad_config, fault_crafted_checkpoint, fault_mismatched_checkpoint, fault_misspelt_key,
    fault_truncated_checkpoint, fault_yaml_python_tag,
)
from faults.runs import (
    fault_disk_full, fault_interrupted_checkpoint_write, fault_kill_9, fault_nan_loss, fault_preemption,
    fault_read_only_output_dir,
    fault_resume_missing_last_checkpoint, fault_resume_other_config, fault_two_cpu_processes,
    fault_two_runs_one_output_dir,
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", help="a folder to keep the workspace in")
    parser.add_argument("--only", action="append", default=[], metavar="TEXT",
                        help="run only the faults whose name contains TEXT (repeatable)")
    args = parser.parse_args()
    root = args.keep or tempfile.mkdtemp(prefix="retina_faults_")
    data = make_data(os.path.join(root, "data"))
    os.makedirs(os.path.join(root, "base"), exist_ok=True)
    checkpoint = trained_checkpoint(os.path.join(root, "base"), data)

    faults = [
        ("bad config values (gamma -1, PRIOR_PROB 2, IOU_LABELS)", fault_bad_config, ()),
        ("yaml with a Python object tag", fault_yaml_python_tag, ()),
        ("loss becomes NaN (lr 1e6)", fault_nan_loss, ()),
        ("kill -9 during training, then --resume", fault_kill_9, ()),
        ("checkpoint write interrupted", fault_interrupted_checkpoint_write, ()),
        ("checkpoint crafted to run code", fault_crafted_checkpoint, ()),
        ("--eval-only with a truncated checkpoint", fault_truncated_checkpoint, (checkpoint,)),
        ("--eval-only with a mismatched checkpoint", fault_mismatched_checkpoint, (checkpoint,)),
        ("missing image file", fault_missing_image, ()),
        ("json with an unknown category id", fault_bad_category, ()),
        ("--num-gpus 2 without CUDA", fault_two_cpu_processes, ()),
        ("annotations that are not finite numbers (NaN, a string)", fault_nonfinite_annotation, ()),
        ("image too large to decode safely (decompression bomb)", fault_decompression_bomb, ()),
        ("nothing to train on (all annotations crowd)", fault_nothing_to_train_on, ()),
        ("--resume into an OUTPUT_DIR trained with another loss", fault_resume_other_config, ()),
        ("two runs in one OUTPUT_DIR at once", fault_two_runs_one_output_dir, ()),
        ("configs/retina_r101.yaml without COCO on the machine", fault_missing_builtin_data, ()),
        ("disk full while writing a checkpoint (40 MB tmpfs)", fault_disk_full, ()),
        ("a misspelt config key, on the command line and in a yaml", fault_misspelt_key, ()),
        ("an OUTPUT_DIR that cannot be written (read-only tmpfs)", fault_read_only_output_dir, ()),
        ("--resume whose last_checkpoint names a file that is gone", fault_resume_missing_last_checkpoint, ()),
        ("preempted: SIGTERM during training (twice), then --resume", fault_preemption, ()),
    ]
    if args.only:
        faults = [f for f in faults if any(text in f[0] for text in args.only)]
    rows = []
    for name, run, extra in faults:
        work = os.path.join(root, name.split()[0].strip("-") + str(len(rows)))
        os.makedirs(work, exist_ok=True)
        try:
            handled, what, lost = run(work, data, *extra)
        except Exception as e:  # a fault the plugin does not handle is a result too
            handled, what, lost = False, f"{type(e).__name__}: {e}"[:150], True
        rows.append((name, "handled" if handled else "NOT HANDLED", what, "yes" if lost else "no"))
        print(f"{rows[-1][1]:>11}  {name}", file=sys.stderr, flush=True)

    print("\n| fault | result | what happened | data lost |\n|---|---|---|---|")
    for name, result, what, lost in rows:
        print(f"| {name} | {result} | {what.replace('|', '/')} | {lost} |")
    print(f"\nworkspace: {root}")


if __name__ == "__main__":
    main()
