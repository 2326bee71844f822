"""
What a run's OUTPUT_DIR holds, read back: the records of its metrics.json, its progress, the
machines that trained it and, once it finished, its Result (result.json). A cell's run lives in
OUTPUT_DIR/cells/<the cell's overrides>.
"""
import json
import os
import statistics
from typing import List, Optional

from ..machine import machines_in_log
from .cell import Cell
from .grids import METRICS
from .result import Result


def read_metrics(output_dir) -> List[dict]:
    """The records of an OUTPUT_DIR's metrics.json; a resumed run's repeat of an iteration
    replaces the earlier record of it."""
    path = os.path.join(output_dir, "metrics.json")
    by_iteration = {}
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                try:
                    record = json.loads(line) if line else None
                except json.JSONDecodeError:  # a line cut short by a kill
                    record = None
                if record is not None:
                    key = (record.get("iteration", -1), "bbox/AP" in record)
                    by_iteration[key] = {**by_iteration.get(key, {}), **record}
    return [by_iteration[k] for k in sorted(by_iteration)]


def summarize_metrics(records: List[dict]):
    """(final bbox metrics {AP: ...}, [(iteration, AP)], median of neg_pairs_per_pos)."""
    evaluations = [r for r in records if "bbox/AP" in r]
    final = {m: evaluations[-1].get(f"bbox/{m}", float("nan")) for m in METRICS} if evaluations else {}
    curve = [(int(r.get("iteration", 0)), r["bbox/AP"]) for r in evaluations]
    return final, curve, median_of(records, "neg_pairs_per_pos")


def median_of(records: List[dict], name) -> Optional[float]:
    """The median over the training records of the finite values of the scalar `name`."""
    values = [r[name] for r in records if isinstance(r.get(name), (int, float)) and r[name] == r[name]]
    return statistics.median(values) if values else None


def last_iteration(output_dir) -> Optional[int]:
    """The last training iteration an OUTPUT_DIR's metrics.json has (its progress); an
    evaluation's record is not one (the final one is logged at iteration MAX_ITER)."""
    path = os.path.join(output_dir, "metrics.json")
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - 65536))  # past an evaluation's long record
        lines = f.read().decode(errors="ignore").strip().splitlines()
    for line in reversed(lines):
        try:
            record = json.loads(line)
            if "bbox/AP" not in record:
                return int(record["iteration"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


def machines_of(output_dir) -> List[str]:
    """The machines that trained an OUTPUT_DIR's run, from its log.txt, which every start of
    train_net.py appends to (run.log is only the runner's last call)."""
    path = os.path.join(output_dir, "log.txt")
    if not os.path.isfile(path):
        return []
    with open(path, errors="replace") as f:
        return machines_in_log(f.read())


def cell_dir(cell: Cell, out_dir) -> str:
    return os.path.join(out_dir, "cells", cell.key)


def finished_result(cell: Cell, out_dir) -> Optional[Result]:
    """The Result of a cell finished before, or None."""
    result_file = os.path.join(cell_dir(cell, out_dir), "result.json")
    if not os.path.isfile(result_file):
        return None
    with open(result_file) as f:
        result = Result(**json.load(f))
    if result.background_share is None:  # a run finished before the field: from its metrics
        result.background_share = median_of(read_metrics(cell_dir(cell, out_dir)), "cls_loss_background_share")
    return result
