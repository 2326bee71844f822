#!/usr/bin/env python
"""
Run the paper's ablations (named grids of config overrides) with train_net.py and report them.

    python tools/run_ablations.py --grid table1b --grid init \
        --config-file configs/quickstart.yaml --output-dir output/ablations \
        SOLVER.MAX_ITER 300 SOLVER.STEPS "(240, 280)"

Grids (retina_plugin/ablations.py): init (CE with and without the prior initialisation),
table1a (alpha for CE), table1b (gamma and alpha for FL), table1d (OHEM against FL),
variants (FL*, softmax FL), headline (CE, balanced CE, FL), interaction (alpha for CE and FL),
imbalance (balanced CE against FL on data of growing imbalance, with configs/sparse.yaml).
Each cell is one train_net.py run in OUTPUT_DIR/cells/<its overrides>; with --seeds N, N runs
(SEED 0 .. N-1). Finished runs are not rerun, so an interrupted command continues where it
stopped; a progress line every minute names the runs in progress and an ETA. A cell whose loss became NaN or infinite is reported as "diverged at iteration N".
Writes results.md, results.csv and, for table1a and table1b, AP plots beside the paper's numbers.
--only TEXT trains just the cells whose label contains TEXT (the report lists them all).
A run that differs from another run (here or in --reuse-from) only in its schedule starts from
that run's checkpoint inside the iterations both share (retina_plugin/ablations/prefix.py).
Trailing KEY VALUE pairs (the schedule, a data set) go to every cell; --dataset and
--extra-config are passed through to train_net.py.

On a SLURM cluster, --executor slurm submits one job per run (retina_plugin/ablations/slurm.py):

    python tools/run_ablations.py --grid headline --seeds 3 --config-file configs/sparse.yaml \
        --output-dir docs/ablations/headline --executor slurm --partition cpu --time 60 \
        --cpus-per-task 2 --mem 8 --slurm-option account=myproject

A preempted or timed-out job is requeued and its run resumes from its checkpoint; rerunning the
same command follows the jobs already queued or running instead of submitting them again.
"""
import argparse
import functools
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from retina_plugin.ablations import GRIDS, run_grids, write_reports  # noqa: E402
from retina_plugin.ablations.configs import resolved_config  # noqa: E402
from retina_plugin.ablations.runner import StaleRunError  # noqa: E402
from retina_plugin.ablations.slurm import SlurmOptions, run_on_slurm  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", action="append", choices=sorted(GRIDS), required=True,
                        help="a grid to run (repeatable)")
    parser.add_argument("--config-file", default="configs/quickstart.yaml")
    parser.add_argument("--extra-config", action="append", default=[], metavar="FILE")
    parser.add_argument("--dataset", nargs=3, action="append", default=[],
                        metavar=("NAME", "JSON", "IMAGE_DIR"))
    parser.add_argument("--output-dir", default="output/ablations")
    parser.add_argument("--jobs", type=int, default=1,
                        help="cells trained at once, each with CPU cores / jobs threads")
    parser.add_argument("--seeds", type=int, default=None, metavar="N",
                        help="run each cell N times, with SEED 0 .. N-1; the report shows each "
                        "run and their mean ± std (default: once, with the config's SEED)")
    parser.add_argument("--reuse-from", action="append", default=[], metavar="DIR",
                        help="another ablation output directory: a run whose resolved config "
                        "equals one of its finished runs takes that result, looked for again at "
                        "each run's turn (a runner there may finish it meanwhile; repeatable)")
    parser.add_argument("--only", action="append", default=[], metavar="TEXT",
                        help="train only the cells whose label contains TEXT, e.g. 'FL gamma 2' or "
                        "'3000 iterations' (repeatable: any of them); the report still lists the "
                        "grid's other cells, as not run or from their earlier runs")
    parser.add_argument("--report-only", action="store_true",
                        help="write the reports from the finished cells and list where the others stopped; train nothing")
    slurm = parser.add_argument_group("SLURM (--executor slurm): one job per run, through submitit")
    slurm.add_argument("--executor", choices=("local", "slurm"), default="local",
                       help="local: a process pool on this machine (--jobs); slurm: one SLURM job per run")
    slurm.add_argument("--partition", default=None, help="the partition to submit to (default: the cluster's)")
    slurm.add_argument("--time", type=int, default=60, metavar="MINUTES",
                       help="each job's time limit; a run that reaches it is requeued and resumes")
    slurm.add_argument("--cpus-per-task", type=int, default=1, help="CPUs per job (train_net.py's threads)")
    slurm.add_argument("--gpus-per-task", type=int, default=0, help="GPUs per job")
    slurm.add_argument("--mem", type=float, default=None, metavar="GB", help="memory per job")
    slurm.add_argument("--signal-delay", type=int, default=90, metavar="SECONDS",
                       help="how long before the time limit SLURM signals the job to save")
    slurm.add_argument("--slurm-option", action="append", default=[], metavar="KEY=VALUE",
                       help="another sbatch option, e.g. account=myproject or qos=low (repeatable)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: use 1 or more")
    if args.seeds is not None and args.seeds < 1:
        parser.error(f"--seeds {args.seeds}: use 1 or more")
    extra = {}
    for option in args.slurm_option:
        key, sep, value = option.partition("=")
        if not sep or not key:
            parser.error(f"--slurm-option {option!r}: write KEY=VALUE, an sbatch option without its dashes")
        extra[key.lstrip("-").replace("-", "_")] = value
    for name in ("time", "cpus_per_task", "signal_delay"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)}: use 1 or more")
    if args.executor == "slurm" and not args.report_only and shutil.which("sbatch") is None:
        parser.error("--executor slurm: there is no sbatch here; submit from a machine of the SLURM cluster")
    if len(args.opts) % 2:
        parser.error(f"config overrides come in KEY VALUE pairs, got {args.opts}")
    if not os.path.isfile(args.config_file):
        parser.error(f"--config-file {args.config_file} does not exist")
    names = list(dict.fromkeys(args.grid))
    labels = [cell.label for name in names for cell in GRIDS[name].cells]
    for text in args.only:
        if not any(text in label for label in labels):
            parser.error(f"--only {text!r}: no cell of {', '.join(names)} has it in its label; "
                         f"the labels are: " + "; ".join(dict.fromkeys(labels)))
    base_args = ["--config-file", args.config_file]
    for path in args.extra_config:
        base_args += ["--extra-config", path]
    for dataset in args.dataset:
        base_args += ["--dataset", *dataset]
    for directory in args.reuse_from:
        if not os.path.isdir(os.path.join(directory, "cells")):
            parser.error(f"--reuse-from {directory}: no cells/ folder there (not an ablation output directory)")
    opts = dict(zip(args.opts[::2], args.opts[1::2]))

    def config_of(cell):  # the config train_net.py resolves for this cell
        return resolved_config(args.config_file, args.extra_config, [*args.opts, *cell.opts()], args.dataset)

    log = lambda line: print(line, flush=True)  # noqa: E731
    execute = None
    if args.executor == "slurm":
        options = SlurmOptions(args.partition, args.time, args.cpus_per_task, args.gpus_per_task, args.mem,
                               args.signal_delay, extra)
        execute = functools.partial(run_on_slurm, out_dir=args.output_dir, base_args=base_args,
                                    extra_opts=args.opts, options=options, log=log,
                                    max_iter=opts.get("SOLVER.MAX_ITER"))
    try:
        results = run_grids(
            names, args.output_dir, base_args, args.opts, jobs=args.jobs, dry=args.report_only,
            seeds=args.seeds, max_iter=opts.get("SOLVER.MAX_ITER"),
            log=log, reuse_from=args.reuse_from, config_of=config_of, execute=execute, only=args.only,
        )
    except StaleRunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    command = " ".join(["python", "tools/run_ablations.py", *sys.argv[1:]] if argv is None else argv)
    verb = "Reported from the finished cells by" if args.report_only else "Measured with"
    paths = write_reports(names, results, args.output_dir, f"{verb}: `{command}`", seeds=args.seeds)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    failed = [k for k, r in results.items() if r.status == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
