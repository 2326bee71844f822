"""The ablation grids and their runner (retina_plugin/ablations.py, tools/run_ablations.py)."""
import csv
import os

import pytest

from detectron2.config import get_cfg

import retina_plugin
from retina_plugin import ablations
from retina_plugin.ablations import GRIDS, Cell, Grid, Result, run_grids, write_reports

from helpers import REPO
from test_train_net import load_tool


def distinct_cells():
    return {cell.key: cell for grid in GRIDS.values() for cell in grid.cells}


@pytest.mark.parametrize("key", sorted(distinct_cells()))
def test_every_cell_is_a_valid_config(key):
    cfg = get_cfg()
    retina_plugin.add_retina_config(cfg)
    retina_plugin.merge_config_file(cfg, os.path.join(REPO, "configs", "quickstart.yaml"))
    retina_plugin.merge_config_list(cfg, distinct_cells()[key].opts())
    retina_plugin.validate_config(cfg)


def test_cells_shared_by_grids_train_once_and_keys_are_distinct():
    fl = {g: c.key for g, grid in GRIDS.items() for c in grid.cells if c.label.startswith("FL gamma 2, alpha 0.25")}
    assert set(fl) == {"headline", "table1b", "table1d", "variants", "interaction"}
    assert len(set(fl.values())) == 1
    for name, grid in GRIDS.items():
        assert len({c.key for c in grid.cells}) == len(grid.cells), name
    # Shared: FL (2, 0.25) by five grids, balanced CE (0.75) by four, CE at alpha 0.25 and
    # 0.5 by two. CE in "init" trains without gradient clipping: not the CE of "headline".
    assert len(distinct_cells()) == sum(len(g.cells) for g in GRIDS.values()) - 4 - 3 - 1 - 1


def test_reports_put_our_numbers_beside_the_papers(tmp_path):
    metrics = lambda ap: {"AP": ap, "AP50": ap + 20, "AP75": ap - 5, "APs": 1.0, "APm": 2.0, "APl": float("nan")}  # noqa: E731
    cells = GRIDS["table1b"].cells
    results = {
        cells[0].key: Result("diverged", iteration=12),
        cells[4].key: Result("ok", metrics(30.0)),
        cells[5].key: Result("ok", metrics(33.5)),
    }
    nan = float("nan")
    results[cells[6].key] = Result("ok", {m: nan for m in ablations.METRICS})  # detected nothing
    paths = write_reports(["table1b"], results, str(tmp_path), "Measured with: `x`")
    md = open(paths["md"]).read()
    assert "| CE gamma 0, alpha 0.75 | diverged at iteration 12 |" in md
    assert "| FL gamma 2, alpha 0.25 | 33.5 | 53.5 | 28.5 | 1.0 | 2.0 | - | 34.0 |" in md
    assert "| FL gamma 5, alpha 0.25 | 0.0 (no detections) | 0.0 |" in md
    assert "| FL gamma 0.1, alpha 0.75 | not run" in md and "not measured here" in md
    rows = list(csv.DictReader(open(paths["csv"])))
    assert len(rows) == len(cells)
    assert rows[5]["AP"] == "33.5" and rows[5]["paper_AP"] == "34.0" and rows[0]["AP"] == ""
    assert os.path.getsize(paths["table1b"]) > 10_000
    points = ablations.plot_series("table1b", results)
    assert points["ours"] == [(1.0, 30.0, 0.25), (2.0, 33.5, 0.25), (5.0, 0.0, 0.25)]
    assert len(points["paper"]) == len(cells)


@pytest.mark.slow
def test_runner_trains_cells_reports_divergence_and_resumes(tmp_path, monkeypatch):
    from retina_plugin.data import make_categories, write_synthetic_coco

    for split, seed in (("train", 0), ("val", 1)):
        write_synthetic_coco(
            tmp_path / split, tmp_path / f"{split}.json", make_categories(2), 4,
            image_size=(64, 64), objects=(1, 4), sizes=(12, 40), seed=seed,
        )
    tiny = Grid(
        "tiny",
        (
            Cell("trains", (("MODEL.RETINANET.SCORE_THRESH_TEST", 0.0),)),
            Cell("diverges", (("SOLVER.BASE_LR", 1e5), ("SOLVER.CLIP_GRADIENTS.ENABLED", False))),
        ),
    )
    monkeypatch.setitem(GRIDS, "tiny", tiny)
    runner = load_tool("run_ablations")
    out = tmp_path / "ablations"
    args = [
        "--grid", "tiny", "--output-dir", str(out), "--jobs", "2",  # both cells at once
        "--dataset", "abl_train", str(tmp_path / "train.json"), str(tmp_path / "train"),
        "--dataset", "abl_val", str(tmp_path / "val.json"), str(tmp_path / "val"),
        "DATASETS.TRAIN", "('abl_train',)", "DATASETS.TEST", "('abl_val',)",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
        "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "6", "SOLVER.STEPS", "()",
        "SOLVER.WARMUP_ITERS", "0",
    ]
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")
    assert runner.main(args) == 0
    results = run_grids(["tiny"], str(out), [], dry=True)
    trained, diverged = (results[c.key] for c in tiny.cells)
    assert trained.status == "ok" and 0 <= trained.metrics["AP"] <= 100
    assert diverged.status == "diverged" and 0 <= diverged.iteration < 6
    md = (out / "results.md").read_text()
    assert "| diverges | diverged at iteration" in md and "| trains | " in md
    # Finished cells are not trained again.
    logs = {c.key: os.path.getmtime(out / "cells" / c.key / "run.log") for c in tiny.cells}
    assert runner.main(args) == 0
    assert logs == {c.key: os.path.getmtime(out / "cells" / c.key / "run.log") for c in tiny.cells}
