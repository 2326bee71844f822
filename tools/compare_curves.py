#!/usr/bin/env python
"""
The AP curves of two training runs side by side, at the evaluations both logged: how far apart
two seeds, or one seed trained on two machines, are while they train.

    python tools/compare_curves.py RUN_A RUN_B [--until 15999] [--window 4000] [--output table.md]

Each RUN is an OUTPUT_DIR with the metrics.json train_net.py wrote (its periodic evaluations,
TEST.EVAL_PERIOD). --until keeps the evaluations up to an iteration (where both runs still
had the same config and learning rate, say). Prints a markdown table of B - A at each
evaluation, then the mean difference, the mean and largest absolute difference and, with
--window, the mean AP of each run over consecutive windows of that many iterations.
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from retina_plugin.ablations.run_dir import read_metrics, summarize_metrics  # noqa: E402


def ap_curve(run_dir):
    """{iteration: AP} of a run's evaluations; a clear error when it has none."""
    if not os.path.isfile(os.path.join(run_dir, "metrics.json")):
        raise SystemExit(f"{run_dir}: no metrics.json. Give a training run's OUTPUT_DIR.")
    curve = dict(summarize_metrics(read_metrics(run_dir))[1])
    if not curve:
        raise SystemExit(f"{run_dir}: metrics.json has no evaluation (bbox/AP); set TEST.EVAL_PERIOD to log some.")
    return curve


def compare(curve_a, curve_b, until=None, window=None):
    """The lines of the comparison of two {iteration: AP} curves (see the module's docstring)."""
    common = sorted(i for i in set(curve_a) & set(curve_b) if until is None or i <= until)
    if not common:
        raise SystemExit("The runs have no evaluation at the same iteration" + (f" up to {until}" if until is not None else "") + ".")
    lines = ["| iteration | AP, A | AP, B | B - A |", "|---|---|---|---|"]
    lines += [f"| {i} | {curve_a[i]:.1f} | {curve_b[i]:.1f} | {curve_b[i] - curve_a[i]:+.1f} |" for i in common]
    differences = [curve_b[i] - curve_a[i] for i in common]
    lines += ["", f"{len(common)} evaluations, iterations {common[0]} to {common[-1]}: B - A is "
              f"{statistics.mean(differences):+.2f} on average; |B - A| {statistics.mean(map(abs, differences)):.2f} "
              f"on average, {max(map(abs, differences)):.1f} at most."]
    if window:
        lines += ["", "| iterations | mean AP, A | mean AP, B | B - A |", "|---|---|---|---|"]
        for start in range(0, common[-1] + 1, window):
            inside = [i for i in common if start <= i < start + window]
            if inside:
                a, b = (statistics.mean(c[i] for i in inside) for c in (curve_a, curve_b))
                lines.append(f"| {start}-{start + window} ({len(inside)} evaluations) | {a:.1f} | {b:.1f} | {b - a:+.1f} |")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a")
    parser.add_argument("run_b")
    parser.add_argument("--until", type=int, help="only the evaluations up to this iteration")
    parser.add_argument("--window", type=int, help="also the mean AP over windows of this many iterations")
    parser.add_argument("--output", help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.window is not None and args.window <= 0:
        parser.error(f"--window {args.window}: give a positive number of iterations")
    lines = compare(ap_curve(args.run_a), ap_curve(args.run_b), args.until, args.window)
    text = "\n".join([f"A: `{args.run_a}`", f"B: `{args.run_b}`", ""] + lines) + "\n"
    print(text, end="")
    if args.output:
        with open(args.output, "w") as f:
            f.write(f"Made by: `python tools/compare_curves.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
