#!/usr/bin/env bash
# All benchmarks of docs/benchmarks.md, in one command. Extra arguments (for example
# --device cuda) go to each script.
#   bash bench/run_all.sh [--device cuda]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" bench/bench_loss.py "$@"
"$PY" bench/bench_model.py train "$@"
"$PY" bench/bench_model.py infer "$@"
"$PY" bench/bench_eval.py
"$PY" bench/bench_sparse_iteration.py --eval
