"""The ablation grids and their runner (retina_plugin/ablations/, tools/run_ablations.py)."""
import csv
import json
import math
import os
import shutil

import pytest

from detectron2.config import get_cfg

import retina_plugin
from retina_plugin import ablations
from retina_plugin.ablations import GRIDS, Cell, Grid, Result, run_grids, write_reports
from retina_plugin.ablations.run_dir import machines_of
from retina_plugin.ablations.runner import FLOAT64_SCORES_DIR
from retina_plugin.machine import describe_machine

from helpers import REPO
from test_train_net import load_tool


def distinct_cells():
    return {cell.key: cell for grid in GRIDS.values() for cell in grid.cells}


def test_every_run_directory_name_fits_the_file_system_and_says_its_seed():
    # The sweep's Sampling-Free cells name a data set and three Sampling-Free keys: 322 bytes
    # at seed 0, over the 255 a directory name may have; the runner failed to create them.
    runs = {run.overrides: run.key for grid in GRIDS.values() for cell in grid.cells for run in cell.seeded(3)}
    assert len(set(runs.values())) == len(runs)  # distinct overrides, distinct directories
    for overrides, key in runs.items():
        assert len(key.encode()) <= ablations.cell.MAX_DIRECTORY_NAME, key
        seed = dict(overrides)["SEED"]
        assert f"seed={seed}" in key, key
    sampling_free = next(c for c in GRIDS["imbalance"].cells
                         if "Sampling-Free" in c.label and "k48_single" in c.label)
    key = sampling_free.with_seed(1).key  # shortened: its names, not its values
    assert "train=retina_imbalance_k48_single_train" in key and "sf_prior=True__seed=1__clip=False__" in key
    # Names that fit are never changed: finished runs are found again by their directory.
    fl = Cell("FL", (("MODEL.RETINANET.FOCAL_LOSS_GAMMA", 2.0),)).with_seed(1)
    assert fl.key == "focal_loss_gamma=2.0__seed=1"


@pytest.mark.parametrize("key", sorted(distinct_cells()))
def test_every_cell_is_a_valid_config(key):
    cfg = get_cfg()
    retina_plugin.add_retina_config(cfg)
    retina_plugin.merge_config_file(cfg, os.path.join(REPO, "configs", "quickstart.yaml"))
    retina_plugin.merge_config_list(cfg, distinct_cells()[key].opts())
    retina_plugin.validate_config(cfg)


def test_cells_shared_by_grids_train_once_and_keys_are_distinct():
    fl = {g: c.key for g, grid in GRIDS.items() for c in grid.cells if c.label == "FL gamma 2, alpha 0.25"}
    assert set(fl) == {"headline_scratch", "table1b", "table1d", "variants", "interaction", "family"}
    assert len(set(fl.values())) == 1
    for name, grid in GRIDS.items():
        assert len({c.key for c in grid.cells}) == len(grid.cells), name
    # Shared: FL (2, 0.25) by six grids, balanced CE (0.75) by four, CE at alpha 0.25 and
    # 0.5 by two, GHM-C (momentum 0.75) by two. CE in "init" trains without gradient clipping:
    # not the CE of "headline_scratch", but the CE of "headline" without clipping. Balanced CE
    # and FL at 24000 and 48000 iterations (the paper's steps): "schedule" and "schedule_three_losses".
    assert len(distinct_cells()) == sum(len(g.cells) for g in GRIDS.values()) - 5 - 3 - 1 - 1 - 1 - 1 - 4
    shared = {c.key for c in GRIDS["schedule"].cells} & {c.key for c in GRIDS["schedule_three_losses"].cells}
    assert {dict(distinct_cells()[key].params)["iterations"] for key in shared} == {24000, 48000} and len(shared) == 4
    ce = {g: c.key for g, grid in GRIDS.items() for c in grid.cells if c.label in ("CE, no clipping", "CE, prior init (pi = 0.01)")}
    assert set(ce) == {"init", "headline"} and len(set(ce.values())) == 1
    ghm = {g: c.key for g, grid in GRIDS.items() for c in grid.cells if c.label == "GHM-C, 30 bins, momentum 0.75"}
    assert set(ghm) == {"family", "ghm_c"} and len(set(ghm.values())) == 1


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
    assert points["ours"] == [(1.0, 30.0, 0.25, 0.0), (2.0, 33.5, 0.25, 0.0), (5.0, 0.0, 0.25, 0.0)]
    assert len(points["paper"]) == len(cells)


@pytest.mark.slow
def test_runner_trains_cells_reports_divergence_and_resumes(tmp_path, monkeypatch, capsys):
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
    # --only trains just the cells it names; the report lists the other as not run.
    trains, diverges = tiny.cells
    assert runner.main(["--only", "trains", *args]) == 0
    assert (out / "cells" / trains.key / "result.json").is_file() and not (out / "cells" / diverges.key).exists()
    assert "| diverges | not run |" in (out / "results.md").read_text()
    # --report-only lists the runs without a result: where each stopped, or that it has not started.
    status = []
    run_grids(["tiny"], str(out), [], dry=True, log=status.append)
    assert status == [f"not started: {diverges.label}"]
    shutil.copytree(out / "cells" / trains.key, tmp_path / "trains_finished")
    os.remove(out / "cells" / trains.key / "result.json")  # as if stopped after its last iteration
    status = []
    run_grids(["tiny"], str(out), [], dry=True, log=status.append)
    assert status[0] == f"not finished: {trains.label}: iteration 6, resumes from model_final.pth", status
    shutil.rmtree(out / "cells" / trains.key)
    shutil.copytree(tmp_path / "trains_finished", out / "cells" / trains.key)
    first = os.path.getmtime(out / "cells" / trains.key / "run.log")
    assert runner.main(args) == 0
    assert os.path.getmtime(out / "cells" / trains.key / "run.log") == first
    # --only the other cell: the report keeps the first cell's finished result.
    assert runner.main(["--only", "diverges", *args]) == 0
    assert "| trains | " in (out / "results.md").read_text() and "| trains | not run" not in (out / "results.md").read_text()
    results = run_grids(["tiny"], str(out), [], dry=True)
    trained, diverged = (results[c.key] for c in tiny.cells)
    assert trained.status == "ok" and 0 <= trained.metrics["AP"] <= 100
    # The final weights evaluated again with float64 class scores, from the run's own config.
    assert set(trained.metrics_float64) == set(trained.metrics) and 0 <= trained.metrics_float64["AP"] <= 100
    assert "MODEL.RETINANET.SCORE_DTYPE_TEST float64" in (out / "cells" / trains.key / FLOAT64_SCORES_DIR / "run.log").read_text()
    with open(out / "results.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["cell"] == "trains")
    assert float(row["AP_float64_scores"]) == trained.metrics_float64["AP"]
    # train_net.py logged the machine that trained it; the result keeps it.
    assert trained.machines == [describe_machine()]
    assert diverged.status == "diverged" and 0 <= diverged.iteration < 6
    md = (out / "results.md").read_text()
    assert "| diverges | diverged at iteration" in md and "| trains | " in md
    # Finished cells are not trained again.
    logs = {c.key: os.path.getmtime(out / "cells" / c.key / "run.log") for c in tiny.cells}
    assert runner.main(args) == 0
    assert logs == {c.key: os.path.getmtime(out / "cells" / c.key / "run.log") for c in tiny.cells}
    # The config changed after the cells ran (here a trailing key; in life the config file):
    # the cell that takes the config's lr no longer trains what its name says, so the runner
    # refuses, names it and trains nothing; the cell that sets its own lr is unchanged.
    changed = args + ["SOLVER.BASE_LR", "0.004"]
    assert runner.main(changed) == 2
    err = capsys.readouterr().err
    assert "1 finished run(s)" in err and "score_thresh_test=0.0: SOLVER.BASE_LR" in err and "-> 0.004" in err and "Move them away" in err
    assert logs == {c.key: os.path.getmtime(out / "cells" / c.key / "run.log") for c in tiny.cells}
    # --report-only still reports them, with a warning.
    assert runner.main(["--report-only", *changed]) == 0
    assert "warning: reported, but trained another config" in capsys.readouterr().out


def test_the_schedule_check_matches_sparse_yaml_and_headline():
    from retina_plugin.ablations.grids import PAPER_SETUP_ITERATIONS, PAPER_SETUP_LR, PAPER_SETUP_STEPS, step_schedule
    from retina_plugin.ablations.configs import resolved_config

    sparse = os.path.join(REPO, "configs", "sparse.yaml")
    cfg = resolved_config(sparse)
    assert cfg.SOLVER.BASE_LR == PAPER_SETUP_LR
    assert (("SOLVER.MAX_ITER", cfg.SOLVER.MAX_ITER), ("SOLVER.STEPS", tuple(cfg.SOLVER.STEPS))) == step_schedule(PAPER_SETUP_ITERATIONS, PAPER_SETUP_STEPS)
    # Every schedule cell names its lr and iterations; those at the config's are headline's
    # balanced CE and FL without clipping, run for run (so --reuse-from takes them).
    schedule = GRIDS["schedule"].cells
    assert all("solver_base_lr=" in c.key and "solver_max_iter=" in c.key for c in schedule)
    first_step = PAPER_SETUP_STEPS[0][0] / PAPER_SETUP_STEPS[0][1]
    at_config = [c for c in schedule if (dict(c.params)["lr"], dict(c.params)["iterations"], dict(c.params)["first_step"])
                 == (PAPER_SETUP_LR, PAPER_SETUP_ITERATIONS, first_step)]
    headline = [c for c in GRIDS["headline"].cells if c.label.startswith(("balanced CE", "FL")) and "no clipping" in c.label]
    assert len(at_config) == len(headline) == 2

    def dump(cell):
        run = resolved_config(sparse, (), cell.with_seed(1).opts())
        run.OUTPUT_DIR = ""
        return run.dump()

    assert [dump(c) for c in at_config] == [dump(c) for c in headline]
    twice = [c for c in schedule if (dict(c.params)["iterations"], dict(c.params)["first_step"]) == (2 * PAPER_SETUP_ITERATIONS, first_step)]
    assert len(twice) == 2 and dump(at_config[0]) != dump(twice[0])  # another run


def test_schedule_report_says_what_twice_the_iterations_gained(tmp_path):
    params = lambda c: dict(c.params)  # noqa: E731
    cells = {(params(c)["alpha"], params(c)["iterations"], round(params(c)["first_step"], 3)): c for c in GRIDS["schedule"].cells}
    results = {}
    # (AP, AP50) per seed; AP75 is AP - 5 (metrics_of), so its gain is the AP's. Balanced CE
    # with the late steps, FL with the paper's: each pairs with its own placement of the steps.
    for (alpha, iterations, first_step), runs in {
        (0.75, 3000, 0.833): ((60.0, 90.0), (62.0, 91.0)), (0.75, 6000, 0.833): ((61.0, 90.5), (62.5, 91.5)),
        (0.75, 6000, 0.667): ((90.0, 99.0), (90.0, 99.0)),
        (0.25, 3000, 0.667): ((65.0, 95.0), None), (0.25, 6000, 0.667): ((70.0, 95.2), (71.0, 96.0)),
    }.items():
        for seed, run in enumerate(runs):
            if run is not None:
                ap, ap50 = run
                results[cells[(alpha, iterations, first_step)].with_seed(seed).key] = Result("ok", {**metrics_of(ap), "AP50": ap50})
    md = open(write_reports(["schedule"], results, str(tmp_path), "x", seeds=2)["md"]).read()
    assert ("| balanced CE, alpha 0.75, no clipping, lr 0.02, 3000 iterations, steps at 5/6 and 14/15 "
            "| +1.0, +0.5 | +0.8 | +0.5 | +0.8 | yes |") in md
    assert ("| FL gamma 2, alpha 0.25, no clipping, lr 0.02, 3000 iterations, steps at 2/3 and 8/9 (the paper's) "
            "| +5.0, not both run | +5.0 | +0.2 | +5.0 | no (from 1 of 2 seeds) |") in md
    assert "| balanced CE, alpha 0.75, no clipping, lr 0.02, 3000 iterations, steps at 2/3 and 8/9 (the paper's) | not both run, not both run | - |" in md


def test_schedule_three_losses_takes_the_sweeps_runs_and_pairs_each_doubling(tmp_path):
    from retina_plugin.ablations.configs import resolved_config
    from retina_plugin.ablations.grids import PAPER_SETUP_ITERATIONS

    sparse = os.path.join(REPO, "configs", "sparse.yaml")
    dataset = "retina_imbalance_k48_single"
    data = ["DATASETS.TRAIN", f"('{dataset}_train',)", "DATASETS.TEST", f"('{dataset}_val',)",
            "MODEL.RETINANET.NUM_CLASSES", "48"]
    cells = GRIDS["schedule_three_losses"].cells
    iterations = lambda c: dict(c.params)["iterations"]  # noqa: E731

    def dump(opts):
        cfg = resolved_config(sparse, (), opts)
        cfg.OUTPUT_DIR = ""
        return cfg.dump()

    # At the paper setup's iterations, with the data set's overrides, its runs are the sweep's
    # there, run for run: --reuse-from takes them instead of training them again.
    at_config = [c for c in cells if iterations(c) == PAPER_SETUP_ITERATIONS]
    sweep = [c for c in GRIDS["imbalance"].cells if c.label.startswith(f"{dataset}: ")]
    assert len(at_config) == len(sweep) == 3
    assert [dump([*data, *c.with_seed(1).opts()]) for c in at_config] == [dump(c.with_seed(1).opts()) for c in sweep]
    # Every loss at 1x, 2x and 4x: the report pairs 1x with 2x and 2x with 4x, loss by loss.
    assert sorted(iterations(c) for c in cells) == sorted(3 * [PAPER_SETUP_ITERATIONS, 2 * PAPER_SETUP_ITERATIONS,
                                                               4 * PAPER_SETUP_ITERATIONS])
    results = {}
    for index, cell in enumerate(cells):
        # AP grows with the iterations, by a loss's own amount: 1x -> 2x gains 2 + index % 3.
        ap = 80.0 + (iterations(cell) // PAPER_SETUP_ITERATIONS).bit_length() * (2 + index % 3) / 2
        results[cell.with_seed(0).key] = Result("ok", metrics_of(ap))
    md = open(write_reports(["schedule_three_losses"], results, str(tmp_path), "x", seeds=1)["md"]).read()
    for loss, gain, verdict in (("balanced CE, alpha 0.75", 1.0, "yes"), ("FL gamma 2, alpha 0.25", 1.5, "no"),
                                ("Sampling-Free CE", 2.0, "no")):
        for its in (PAPER_SETUP_ITERATIONS, 2 * PAPER_SETUP_ITERATIONS):
            label = f"{loss}, no clipping, lr 0.02, {its} iterations, steps at 2/3 and 8/9 (the paper's)"
            assert f"| {label} | {gain:+.1f} | {gain:+.1f} | {gain:+.1f} | {gain:+.1f} | {verdict} |" in md


def metrics_of(ap):
    return {"AP": ap, "AP50": ap + 20, "AP75": ap - 5, "APs": 1.0, "APm": 2.0, "APl": float("nan")}


def test_seeds_are_runs_of_their_own_first_seeds_first():
    runs = ablations.grid_runs(["headline_scratch"], seeds=3)
    cells = GRIDS["headline_scratch"].cells
    assert len(runs) == 9
    seeds = [dict(c.overrides)["SEED"] for c in runs.values()]
    assert seeds == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert len({c.key for c in runs.values()}) == 9 and all("seed=" in k for k in runs)
    # Without --seeds, a cell is its one run with the config's SEED, named as before.
    assert list(ablations.grid_runs(["headline_scratch"])) == [c.key for c in cells]
    # A cell may cap its seeds: the sweep's standard-init CE runs once.
    sweep = ablations.grid_runs(["imbalance_scratch"], seeds=2)
    standard = [c for c in sweep.values() if "standard init" in c.label]
    assert len(standard) == len(ablations.SWEEP_DATA) and len(sweep) == 5 * len(ablations.SWEEP_DATA)


def test_only_runs_the_cells_whose_label_has_the_text(tmp_path, capsys):
    runs = ablations.grid_runs(["schedule"], seeds=2, only=["FL gamma 2", "balanced CE"])
    assert len(runs) == 2 * len(GRIDS["schedule"].cells)
    fl_3000 = ablations.grid_runs(["schedule"], seeds=2, only=["FL gamma 2"])
    labels = {c.label for c in fl_3000.values()}
    assert labels and all(label.startswith("FL gamma 2") for label in labels)
    assert len(fl_3000) == 2 * len(labels) and len(labels) == len(GRIDS["schedule"].cells) // 2
    # A text no cell has is an error that lists the labels, before anything runs.
    with pytest.raises(SystemExit):
        load_tool("run_ablations").main(["--grid", "init", "--only", "FL gamma 7", "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert "--only 'FL gamma 7': no cell of init" in err and "CE, prior init (pi = 0.01)" in err
    assert not os.path.exists(tmp_path / "cells")


def test_report_of_seeded_runs_shows_each_run_and_mean_std(tmp_path):
    cells = GRIDS["headline_scratch"].cells
    results = {}
    for cell, aps in zip(cells, ([40.0, 42.0, 44.0], [30.0, 31.0, None], [35.0, 36.0, 37.0])):
        for run, ap in zip(cell.seeded(3), aps):
            if ap is not None:
                results[run.key] = Result("ok", metrics_of(ap), curve=[(99, ap - 10), (199, ap)])
    diverged = cells[1].with_seed(2)
    results[diverged.key] = Result("diverged", iteration=7)
    paths = write_reports(["headline_scratch"], results, str(tmp_path), "Measured with: `x`", seeds=3)
    md = open(paths["md"]).read()
    assert "| CE | 40.0, 42.0, 44.0 | 42.0 ± 2.0 | 62.0 ± 2.0 | 37.0 ± 2.0 | 1.0 ± 0.0 | 2.0 ± 0.0 | - | - |" in md
    # The mean of the finished runs says that a run of the cell did not finish.
    assert "| balanced CE, alpha 0.75 | 30.0, 31.0, diverged at iteration 7 | 30.5 ± 0.7 (2 of 3 runs; 1 did not finish) | 50.5 ± 0.7 |" in md
    rows = list(csv.DictReader(open(paths["csv"])))
    assert len(rows) == 9 and [r["seed"] for r in rows[:3]] == ["0", "1", "2"]
    assert rows[5]["status"] == "diverged at iteration 7" and rows[5]["AP"] == ""
    # The AP curves: one line per cell, the mean of the seeds at each evaluation.
    from retina_plugin.ablations.plots import curves_of

    assert curves_of(cells[0], results, 3) == [(99, 32.0, 2.0, 3), (199, 42.0, 2.0, 3)]
    # An evaluation that detected nothing (COCOEvaluator's NaN) counts as an AP of 0.
    results[cells[2].with_seed(0).key].curve[0] = (99, float("nan"))
    iteration, mean, _, runs = curves_of(cells[2], results, 3)[0]
    assert (iteration, runs) == (99, 3) and mean == pytest.approx((0.0 + 26.0 + 27.0) / 3)
    assert os.path.getsize(paths["headline_scratch_curves"]) > 10_000


def test_sweep_report_puts_fl_minus_balanced_ce_against_r(tmp_path):
    # Seed 1 adds 1 AP to balanced CE and 2 to FL: the paired differences are seed 0's and
    # seed 1's, not the spread of the two cells' means.
    results = {}
    for cell in GRIDS["imbalance_scratch"].cells:
        dataset = dict(cell.params)["dataset"]
        ratio = {"retina_shapes": 400.0, "retina_sparse": 30000.0}.get(dataset)
        if ratio is None:
            continue
        for seed, run in enumerate(cell.seeded(2)):
            if "standard init" in cell.label:
                result = Result("diverged", iteration=3, neg_pairs_per_pos=ratio)
            else:
                ap = (50.0 if "balanced" in cell.label else 45.0) if ratio < 1000 else (10.0 if "balanced" in cell.label else 20.0)
                share = 0.9 if "balanced" in cell.label else 0.3 + 0.1 * seed
                step = 1 if "balanced" in cell.label else 2
                result = Result("ok", metrics_of(ap + step * seed), neg_pairs_per_pos=ratio, background_share=share)
            results[run.key] = result
    points = ablations.sweep_points("imbalance_scratch", results, seeds=2)
    assert [p["dataset"] for p in points] == [d for d, _ in ablations.SWEEP_DATA]
    half = 12.706 * math.sqrt(0.5) / math.sqrt(2)  # t(0.975, 1) * std / sqrt(n) of (-5, -4)
    fl = points[0]["delta"]["FL"]
    assert points[0]["R"] == 400.0 and fl[:3] == (-4.5, pytest.approx(math.sqrt(0.5)), 2)
    assert fl[3] == pytest.approx((-4.5 - half, -4.5 + half), abs=1e-3)
    assert points[3]["R"] == 30000.0 and points[3]["delta"]["FL"][:3] == (10.5, pytest.approx(math.sqrt(0.5)), 2)
    one_seed = {k: r for k, r in results.items() if "seed=1" not in k}
    assert "| retina_sparse | 3e+04 | 10.0 | 20.0 | +10.0 (1 seed) |" in "\n".join(ablations.sweep_report.sweep_table("imbalance_scratch", one_seed, seeds=2))
    assert points[3]["outcome"] == {"CE, standard init": "diverged at iteration 3"}
    paths = write_reports(["imbalance_scratch"], results, str(tmp_path), seeds=2)
    md = open(paths["md"]).read()
    assert "| retina_sparse | 3e+04 | 10.5 ± 0.7 | 21.0 ± 1.4 | +10.5 ± 0.7 [+4.1, +16.9] | 90%, 35% | diverged at iteration 3 |" in md
    # A seed that only one of the two losses finished is not paired.
    del results[next(k for k in results if "focal_loss_gamma=2.0" in k and "seed=1" in k and "sparse" in k)]
    assert ablations.sweep_points("imbalance_scratch", results, seeds=2)[3]["delta"]["FL"][:3] == (10.0, 0.0, 1)
    assert "| retina_imbalance_k12 | - | - | - | - | -, - | not run |" in md
    assert os.path.getsize(paths["imbalance_scratch"]) > 10_000


def test_sweep_of_three_losses_compares_each_with_balanced_ce(tmp_path):
    results = {}
    aps = {"balanced CE": 50.0, "FL": 40.0, "Sampling-Free": 56.0}
    for cell in GRIDS["imbalance"].cells:
        params = dict(cell.params)
        if params["dataset"] != "retina_sparse":
            continue
        for seed, run in enumerate(cell.seeded(2)):
            results[run.key] = Result("ok", metrics_of(aps[params["loss"]] + seed), neg_pairs_per_pos=25000.0,
                                      background_share=0.2)
    table = "\n".join(ablations.sweep_report.sweep_table("imbalance", results, seeds=2))
    assert ("| data set | R (training's median) | balanced CE AP | FL AP | Sampling-Free AP | "
            "AP(FL) - AP(balanced CE) | AP(Sampling-Free) - AP(balanced CE) |") in table
    assert "| retina_sparse | 2.5e+04 | 50.5 ± 0.7 | 40.5 ± 0.7 | 56.5 ± 0.7 | -10.0 ± 0.0 [-10.0, -10.0] | +6.0 ± 0.0 [+6.0, +6.0] | 20%, 20%, 20% |" in table
    assert "| retina_shapes | - | - | - | - | - | - | -, -, - |" in table
    assert os.path.getsize(write_reports(["imbalance"], results, str(tmp_path), seeds=2)["imbalance"]) > 10_000


def test_the_sweep_report_says_whether_each_run_levelled_off_before_the_rate_dropped(tmp_path):
    from retina_plugin.ablations.run_dir import cell_dir
    from retina_plugin.ablations.sweep_report import levelled_table

    shapes = [c for c in GRIDS["imbalance"].cells if dict(c.params)["dataset"] == "retina_shapes"]
    balanced, fl, free = (next(c for c in shapes if dict(c.params)["loss"] == loss)
                          for loss in ("balanced CE", "FL", "Sampling-Free"))
    results = {}

    def finished(run, curve, steps):
        results[run.key] = Result("ok", metrics_of(curve[-1][1]), curve=curve)
        os.makedirs(cell_dir(run, str(tmp_path)))
        if steps is not None:
            with open(os.path.join(cell_dir(run, str(tmp_path)), "config.yaml"), "w") as f:
                f.write(f"SOLVER:\n  STEPS: {list(steps)}\n  MAX_ITER: 1200\n")

    iterations = range(99, 1200, 100)
    # Flat at 40 before the step at 800, then 45: the last quarter (600-799) gains 0, the steps add 5.
    finished(balanced.seeded(2)[0], [(i, 40.0 if i < 800 else 45.0) for i in iterations], (800, 1000))
    # Climbing 1 AP per 100 iterations until the step: 4.99, 5.99 (400-599) against 6.99, 7.99
    # (600-799) is +2.0; ending at 10.49, the steps add 3.
    finished(balanced.seeded(2)[1], [(i, i / 100 if i < 800 else 10.49) for i in iterations], (800, 1000))
    # No step: the rate is constant until MAX_ITER (1200), the windows are 600-899 and 900-1199:
    # 6.99..8.99 against 9.99..11.99, +3.0; the end (11.99) is 1.0 above the last window's mean.
    finished(fl.seeded(2)[0], [(i, i / 100) for i in iterations], ())
    finished(free.seeded(2)[0], [(i, 50.0) for i in iterations], None)  # no config.yaml: not read
    finished(free.seeded(2)[1], [(i, 50.0) for i in iterations], None)
    with open(os.path.join(cell_dir(free.seeded(2)[1], str(tmp_path)), "config.yaml"), "w") as f:
        f.write("MODEL: {}\n")  # no schedule in it: not read either
    table = "\n".join(levelled_table("imbalance", results, str(tmp_path), seeds=2))
    assert "| retina_shapes: balanced CE, alpha 0.75 | 800 | +0.0, +2.0 | +1.0 | +4.0 |" in table
    assert "| retina_shapes: FL gamma 2, alpha 0.25 | 1200 | +3.0, - | +3.0 | +1.0 |" in table
    assert "Sampling-Free" not in table
    assert levelled_table("imbalance", {}, str(tmp_path), seeds=2) == []


def test_measured_regimes_answer_by_the_nearest_r(tmp_path):
    from retina_plugin.ablations.regimes import Source, format_regimes, measured_regimes

    def write(relative, rows):
        path = tmp_path / relative
        path.parent.mkdir()
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["grid", "cell", "status", "AP", "neg_pairs_per_pos"])
            writer.writerows(rows)

    write("old/results.csv", [("imbalance", *row) for row in [
        ("retina_shapes: balanced CE, alpha 0.75", "ok", 70.0, 400.0), ("retina_shapes: FL gamma 2, alpha 0.25", "ok", 72.0, 380.0),
        ("retina_sparse: balanced CE, alpha 0.75", "ok", 60.0, 25000.0), ("retina_sparse: FL gamma 2, alpha 0.25", "ok", 50.0, 25000.0),
        ("retina_sparse: FL gamma 2, alpha 0.25", "diverged at iteration 3", "", 25000.0)]])
    write("new/results.csv", [])  # no run finished yet: the older sweeps answer
    write("one/results.csv", [("headline", *row) for row in [
        ("balanced CE, alpha 0.75, no clipping", "ok", 83.0, 25100.0), ("balanced CE, alpha 0.75, no clipping", "ok", 84.0, 25300.0),
        ("FL gamma 2, alpha 0.25, no clipping", "ok", 85.0, 25200.0),
        ("FL gamma 2, alpha 0.25, clipping at norm 5", "ok", 99.0, 25200.0),  # not the setup asked for
        ("CE, standard init (bias 0: pi = 0.5)", "diverged at iteration 838", "", 25200.0)]])
    new, one, old = (Source("new/results.csv", "newer"), Source("one/results.csv", "one R", dataset="retina_sparse",
                     cell_suffix=", no clipping", spans_r=False), Source("old/results.csv", "older"))

    regimes = measured_regimes(9000.0, (new, old), root=str(tmp_path))  # nearer 25000 than 390 on a log scale
    assert len(regimes) == 1
    assert regimes[0]["dataset"] == "retina_sparse" and regimes[0]["R"] == 25000.0 and regimes[0]["what"] == "older"
    assert regimes[0]["ranking"] == [("balanced CE, alpha 0.75", 60.0, 1), ("FL gamma 2, alpha 0.25", 50.0, 1)]
    assert measured_regimes(100.0, (new, old), root=str(tmp_path))[0]["dataset"] == "retina_shapes"
    assert "balanced CE, alpha 0.75 60.0 (1 run) > FL gamma 2, alpha 0.25 50.0 (1 run)" in format_regimes(9000.0, regimes)
    assert measured_regimes(float("inf"), (new, old), root=str(tmp_path)) == []

    # A grid on one data set is shown beside the sweep after it, its setup's cells only.
    first, second = measured_regimes(100.0, (new, one, old), root=str(tmp_path))
    assert (first["dataset"], first["R"], first["what"]) == ("retina_sparse", 25200.0, "one R")
    assert first["ranking"] == [("FL gamma 2, alpha 0.25", 85.0, 1), ("balanced CE, alpha 0.75", 83.5, 2)]
    assert second["dataset"] == "retina_shapes"
    text = format_regimes(100.0, [first, second]).splitlines()
    assert len(text) == 2 and "FL gamma 2, alpha 0.25 85.0 (1 run) > balanced CE, alpha 0.75 83.5 (2 runs)" in text[0]
    assert "at one R only, in retina_sparse" in text[0] and "the nearest measured regime is retina_shapes" in text[1]
    # A sweep that spans R, once it has runs, answers alone.
    assert [r["what"] for r in measured_regimes(100.0, (old, one), root=str(tmp_path))] == ["older"]
    # An unfinished sweep answers only from data sets where all its runs are trained, and the
    # sources after it are shown too (the same data set only once).
    write("partial/results.csv", [("imbalance", *row) for row in [
        ("retina_shapes: balanced CE, alpha 0.75", "ok", 67.0, 378.0), ("retina_shapes: FL gamma 2, alpha 0.25", "not run", "", ""),
        ("retina_sparse: balanced CE, alpha 0.75", "ok", 83.0, 25400.0), ("retina_sparse: FL gamma 2, alpha 0.25", "ok", 84.0, 25400.0),
        ("retina_imbalance_k12: balanced CE, alpha 0.75", "not run", "", "")]])
    partial = Source("partial/results.csv", "paper's setup")
    nearest, older = measured_regimes(100.0, (partial, one, old), root=str(tmp_path))  # `one`: retina_sparse again
    assert (nearest["dataset"], nearest["what"]) == ("retina_sparse", "paper's setup (under way: 3 of 5 runs)")
    assert nearest["ranking"] == [("FL gamma 2, alpha 0.25", 84.0, 1), ("balanced CE, alpha 0.75", 83.0, 1)]
    assert (older["dataset"], older["what"]) == ("retina_shapes", "older")
    text = format_regimes(100.0, [nearest, older]).splitlines()
    assert "the nearest of the regimes measured so far is retina_sparse" in text[0]
    assert [r["what"] for r in measured_regimes(100.0, (partial, old), root=str(tmp_path))] == [
        "paper's setup (under way: 3 of 5 runs)", "older"]


def test_progress_names_running_runs_their_iteration_and_an_eta(tmp_path):
    runs = ablations.grid_runs(["headline_scratch"], seeds=2)
    first, second, third = list(runs.values())[:3]
    os.makedirs(tmp_path / "cells" / first.key)
    with open(tmp_path / "cells" / first.key / "result.json", "w") as f:
        f.write('{"status": "ok", "metrics": {"AP": 1.0}}')
    progress = ablations.Progress(runs, str(tmp_path), jobs=2, max_iter=3000)
    assert progress.line() == "runs done 1 of 6; ETA after the first run finishes"
    progress.started(second)
    os.makedirs(tmp_path / "cells" / second.key)
    with open(tmp_path / "cells" / second.key / "metrics.json", "w") as f:
        f.write('{"iteration": 9, "loss_cls": 1.0}\n{"iteration": 19, "loss_cls": 0.5}\n')
    progress.started(third)
    assert progress.line() == (
        "runs done 1 of 6; [balanced CE, alpha 0.75, seed 0: iteration 20/3000]; "
        "[FL gamma 2, alpha 0.25, seed 0: starting]; ETA after the first run finishes"
    )
    progress.finished(second, Result("ok", {"AP": 2.0}, seconds=600.0), trained=True)
    line = progress.line()
    assert line.startswith("runs done 2 of 6; [FL gamma 2, alpha 0.25, seed 0: starting]; ETA ")
    assert line.endswith("(20 min)")  # 4 runs left, 600 s each, 2 at once


def test_a_finished_runs_line_says_its_ap_or_why_it_has_none_once():
    from retina_plugin.ablations.result import outcome

    assert outcome(Result("ok", {"AP": 83.46})) == "ok 83.5"
    assert outcome(Result("ok", {"AP": float("nan")})) == "ok 0.0 (no detections)"
    assert outcome(Result("diverged", iteration=838)) == "diverged at iteration 838"
    assert outcome(Result("failed", log="cells/x/run.log")) == "failed (see cells/x/run.log)"


def test_progress_eta_counts_a_resumed_run_for_the_part_it_trained(tmp_path):
    runs = ablations.grid_runs(["headline_scratch"], seeds=2)
    resumed, running, diverged = list(runs.values())[:3]

    def trained_until(cell, iteration):
        os.makedirs(tmp_path / "cells" / cell.key, exist_ok=True)
        with open(tmp_path / "cells" / cell.key / "metrics.json", "a") as f:
            f.write(json.dumps({"iteration": iteration - 1, "loss_cls": 1.0}) + "\n")

    progress = ablations.Progress(runs, str(tmp_path), jobs=2, max_iter=3000)
    tail = list(runs.values())[3]
    trained_until(tail, 2900)  # parked near its end: its time is mostly the final evaluations
    progress.started(tail)
    trained_until(tail, 3000)
    progress.finished(tail, Result("ok", {"AP": 2.0}, seconds=120.0), trained=True)
    assert progress.line().endswith("ETA after the first run finishes")  # not 120 s x 30
    trained_until(resumed, 1500)  # parked half-way by an earlier session
    progress.started(resumed)
    progress.started(diverged)
    trained_until(diverged, 100)
    progress.finished(diverged, Result("diverged", {}, seconds=30.0), trained=True)
    assert progress.line().startswith("runs done 2 of 6; ")
    assert progress.line().endswith("ETA after the first run finishes")  # a diverged run's time is no run's
    trained_until(resumed, 3000)
    progress.finished(resumed, Result("ok", {"AP": 2.0}, seconds=600.0), trained=True)
    progress.started(running)
    trained_until(running, 1500)
    line = progress.line()
    assert line.startswith("runs done 3 of 6; [balanced CE, alpha 0.75, seed 0: iteration 1500/3000]; ETA ")
    # 600 s for half a run: 1200 s a run; 3 runs left, of which half of one is done, 2 at once
    assert line.endswith("(25 min)")


def test_a_run_with_the_same_resolved_config_is_reused_not_retrained(tmp_path):
    from retina_plugin.ablations.configs import resolved_config

    config = os.path.join(REPO, "configs", "quickstart.yaml")
    cell = Cell("FL", (("MODEL.RETINANET.FOCAL_LOSS_GAMMA", 2.0), ("SEED", 0)))
    other = Cell("FL elsewhere", (("MODEL.RETINANET.FOCAL_LOSS_GAMMA", 2.0), ("SEED", 0), ("DATASETS.TRAIN", "('retina_shapes_train',)")))
    # A finished run of another output directory, trained with the same config (its own OUTPUT_DIR).
    before = tmp_path / "before" / "cells" / other.key
    before.mkdir(parents=True)
    cfg = resolved_config(config, (), other.opts() + ["OUTPUT_DIR", str(before), "MODEL.DEVICE", "cpu"])
    (before / "config.yaml").write_text(cfg.dump())
    (before / "metrics.json").write_text('{"iteration": 9, "bbox/AP": 41.5}\n')
    # It started from a run of its own output directory: its record names it from there.
    write_result = Result("ok", metrics_of(41.5), curve=[(9, 41.5)],
                          shared_prefix_from=f"{os.path.join('cells', 'long')}, iterations 0-7")
    import json

    (before / "result.json").write_text(json.dumps(write_result.__dict__))
    changed = Cell("FL, seed 1", (("MODEL.RETINANET.FOCAL_LOSS_GAMMA", 2.0), ("SEED", 1)))
    grid = Grid("reuse", (cell, changed))
    out = tmp_path / "now"
    trained = []

    def config_of(c):
        return resolved_config(config, (), c.opts())

    def run_cell(c, out_dir, *args, **kwargs):  # trains nothing: records what it would train
        done = ablations.finished_result(c, out_dir)
        return done if done is not None else trained.append(c.key) or Result("failed")

    import unittest.mock

    with unittest.mock.patch.dict(GRIDS, {"reuse": grid}), \
            unittest.mock.patch.object(ablations.runner, "run_cell", run_cell):
        results = run_grids(["reuse"], str(out), [], reuse_from=[str(tmp_path / "before")], config_of=config_of, log=lambda line: None)
        report = open(write_reports(["reuse"], results, str(out))["md"]).read()
    # The same config (a different OUTPUT_DIR and device) is taken over; another seed is trained.
    assert trained == [changed.key]
    reused = results[cell.key]
    assert reused.status == "ok" and reused.metrics["AP"] == 41.5
    assert reused.reused_from == os.path.join("..", "before", "cells", other.key)
    assert (out / "cells" / cell.key / "metrics.json").read_text() == (before / "metrics.json").read_text()
    assert ablations.finished_result(cell, str(out)).reused_from == reused.reused_from
    assert f"FL seed 0 is `{reused.reused_from}`" in report
    # ... and the reused copy names that run from its own output directory.
    forked_from = os.path.join("..", "before", "cells", "long")
    assert reused.shared_prefix_from == f"{forked_from}, iterations 0-7"
    assert f"FL seed 0 took `{forked_from}, iterations 0-7`" in report


def test_a_run_finished_beside_by_its_turn_is_taken_not_trained_again(tmp_path):
    import json
    import unittest.mock

    from retina_plugin.ablations.configs import resolved_config

    config = os.path.join(REPO, "configs", "quickstart.yaml")
    first = Cell("FL", (("MODEL.RETINANET.FOCAL_LOSS_GAMMA", 2.0), ("SEED", 0)))
    second = Cell("FL, seed 1", (("MODEL.RETINANET.FOCAL_LOSS_GAMMA", 2.0), ("SEED", 1)))
    beside = tmp_path / "beside" / "cells" / second.key
    (tmp_path / "beside" / "cells").mkdir(parents=True)
    trained, lines = [], []

    def config_of(c):
        return resolved_config(config, (), c.opts())

    def run_cell(c, out_dir, *args, **kwargs):
        done = ablations.finished_result(c, out_dir)
        if done is not None:
            return done
        # While this runner trains the first run, a runner beside it finishes the second.
        trained.append(c.key)
        beside.mkdir()
        cfg = config_of(second)
        cfg.OUTPUT_DIR = str(beside)
        (beside / "config.yaml").write_text(cfg.dump())
        (beside / "result.json").write_text(json.dumps(Result("ok", metrics_of(50.0)).__dict__))
        return Result("ok", metrics_of(40.0))

    with unittest.mock.patch.dict(GRIDS, {"reuse": Grid("reuse", (first, second))}), \
            unittest.mock.patch.object(ablations.runner, "run_cell", run_cell):
        results = run_grids(["reuse"], str(tmp_path / "now"), [], reuse_from=[str(tmp_path / "beside")],
                            config_of=config_of, log=lines.append)
    assert trained == [first.key]
    assert results[second.key].metrics["AP"] == 50.0
    assert results[second.key].reused_from == os.path.join("..", "beside", "cells", second.key)
    assert any(line.startswith("FL, seed 1: the same config as ") for line in lines)
    assert lines[-1].startswith("FL, seed 1 (seed 1): ok 50.0; runs done 2 of 2")


def test_a_finished_run_without_its_config_is_not_reused_and_the_log_says_why(tmp_path):
    import json
    import unittest.mock

    from retina_plugin.ablations.configs import resolved_config

    config = os.path.join(REPO, "configs", "quickstart.yaml")
    cell = Cell("FL", (("MODEL.RETINANET.FOCAL_LOSS_GAMMA", 2.0), ("SEED", 0)))
    before = tmp_path / "before" / "cells" / cell.key  # as a clone has it: result.json only
    before.mkdir(parents=True)
    (before / "result.json").write_text(json.dumps(Result("ok", metrics_of(41.5)).__dict__))
    trained, lines = [], []

    def run_cell(c, out_dir, *args, **kwargs):
        return trained.append(c.key) or Result("failed")

    with unittest.mock.patch.dict(GRIDS, {"reuse": Grid("reuse", (cell,))}), \
            unittest.mock.patch.object(ablations.runner, "run_cell", run_cell):
        run_grids(["reuse"], str(tmp_path / "now"), [], reuse_from=[str(tmp_path / "before")],
                  config_of=lambda c: resolved_config(config, (), c.opts()), log=lines.append)
    assert trained == [cell.key]
    assert any("1 finished run(s) have no config.yaml" in line and str(before) in line for line in lines)



def test_background_share_is_the_median_of_training_and_filled_in_for_older_results(tmp_path):
    import json

    cell = Cell("FL", (("SEED", 0),))
    directory = tmp_path / "cells" / cell.key
    directory.mkdir(parents=True)
    shares = [0.9, 0.2, 0.3, float("nan"), 0.25]  # a NaN (no positives) is not a share
    (directory / "metrics.json").write_text(
        "".join(json.dumps({"iteration": i, "cls_loss_background_share": v}) + "\n" for i, v in enumerate(shares))
        + json.dumps({"iteration": 5, "bbox/AP": 12.0}) + "\n"
    )
    # A result.json written before the field existed.
    older = {k: v for k, v in Result("ok", metrics_of(12.0)).__dict__.items() if k != "background_share"}
    (directory / "result.json").write_text(json.dumps(older))
    assert ablations.finished_result(cell, str(tmp_path)).background_share == pytest.approx(0.275)


def test_a_run_resumed_on_another_machine_names_both_and_the_report_says_so(tmp_path):
    # log.txt as detectron2 appends to it: started on one machine, resumed on another, then
    # on the first again; a line of another logger that mentions a machine is not one.
    directory = tmp_path / "run"
    directory.mkdir()
    (directory / "log.txt").write_text(
        "[12/03 10:00:00] retina_plugin INFO: Machine: Intel Xeon (AVX2), torch 2.14.1\n"
        "[12/03 10:00:01] d2.utils.events INFO:  iter: 19  total_loss: 1.9\n"
        "[12/04 16:00:00] retina_plugin INFO: Machine: AMD EPYC (AVX512), torch 2.14.1\n"
        "[12/05 09:00:00] retina_plugin INFO: Machine: Intel Xeon (AVX2), torch 2.14.1\n"
    )
    assert machines_of(str(directory)) == ["Intel Xeon (AVX2), torch 2.14.1", "AMD EPYC (AVX512), torch 2.14.1"]
    assert machines_of(str(tmp_path)) == []  # no log: nothing known, nothing made up
    cells = GRIDS["table1b"].cells
    results = {
        cells[4].key: Result("ok", metrics_of(30.0), machines=machines_of(str(directory))),
        cells[5].key: Result("ok", metrics_of(33.5), machines=["Intel Xeon (AVX2), torch 2.14.1"]),
    }
    paths = write_reports(["table1b"], results, str(tmp_path), "Measured with: `x`")
    assert "**These runs were trained on 2 different machines**" in open(paths["md"]).read()
    rows = list(csv.DictReader(open(paths["csv"])))
    assert rows[4]["machines"] == "Intel Xeon (AVX2), torch 2.14.1; AMD EPYC (AVX512), torch 2.14.1"
    # One machine throughout: nothing to say.
    results[cells[4].key].machines = ["Intel Xeon (AVX2), torch 2.14.1"]
    paths = write_reports(["table1b"], results, str(tmp_path), "Measured with: `x`")
    assert "different machines" not in open(paths["md"]).read()


def test_compare_curves_puts_two_runs_evaluations_side_by_side(tmp_path, capsys):
    import json

    tool = load_tool("compare_curves")
    for name, aps in (("a", {499: 30.0, 999: 50.0, 1499: 60.0, 1999: 62.0}), ("b", {499: 31.0, 999: 49.0, 1999: 64.0})):
        (tmp_path / name).mkdir()
        records = [{"iteration": i, "total_loss": 1.0} for i in range(0, 2000, 100)]
        records += [{"iteration": i, "bbox/AP": ap} for i, ap in aps.items()]
        (tmp_path / name / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in records))
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    # Only the evaluations both have (1499 is A's alone), up to --until.
    assert tool.main([a, b, "--until", "1999", "--window", "1000", "--output", str(tmp_path / "t.md")]) == 0
    out = capsys.readouterr().out
    assert "| 499 | 30.0 | 31.0 | +1.0 |" in out and "| 999 | 50.0 | 49.0 | -1.0 |" in out and "| 1499 |" not in out
    assert "3 evaluations, iterations 499 to 1999: B - A is +0.67 on average; |B - A| 1.33 on average, 2.0 at most." in out
    assert "| 0-1000 (2 evaluations) | 40.0 | 40.0 | +0.0 |" in out and "| 1000-2000 (1 evaluations) | 62.0 | 64.0 | +2.0 |" in out
    assert (tmp_path / "t.md").read_text().startswith("Made by: `python tools/compare_curves.py ")
    assert tool.main([a, b, "--until", "999"]) == 0 and "2 evaluations" in capsys.readouterr().out
    # A directory that is not a run, and runs with no common evaluation, get a message, not a traceback.
    with pytest.raises(SystemExit, match="no metrics.json"):
        tool.main([a, str(tmp_path)])
    with pytest.raises(SystemExit, match="no evaluation at the same iteration up to 100"):
        tool.main([a, b, "--until", "100"])


def test_headline_report_compares_losses_and_clipping_seed_by_seed(tmp_path):
    # AP per loss and seed, without clipping; with clipping each is 2 lower, but for CE's
    # seed 1, which clipping helps. Balanced CE's seed 2 diverged without clipping.
    aps = {"CE": [80.0, 81.0, 79.0], "balanced CE, alpha 0.75": [83.0, 82.0, None],
           "FL gamma 2, alpha 0.25": [84.0, 82.5, 84.0], "Sampling-Free CE": [83.5, 81.0, 83.0]}
    results = {}
    for cell in GRIDS["headline"].cells:
        params = dict(cell.params)
        for seed, run in enumerate(cell.seeded(3)):
            ap = aps[params["loss"]][seed]
            if ap is None and not params["clipping"]:
                results[run.key] = Result("diverged", iteration=40)
                continue
            ap = ap if ap is not None else 81.0
            if params["clipping"]:
                ap += 3.0 if (params["loss"], seed) == ("CE", 1) else -2.0
            results[run.key] = Result("ok", metrics_of(ap))
    md = open(write_reports(["headline"], results, str(tmp_path), seeds=3)["md"]).read()
    assert "| FL gamma 2, alpha 0.25, no clipping | +1.0, +0.5, - | +0.8 ± 0.4 | -2.4 to +3.9 | 2 of 2 |" in md
    assert "| Sampling-Free CE, no clipping | +0.5, -1.0, - | -0.2 ± 1.1 | -9.8 to +9.3 | 1 of 2 |" in md
    assert "| CE, clipping at norm 5 | -3.0, +4.0, -2.0 | -0.3 ± 3.8 | -9.7 to +9.1 | 1 of 3 |" in md
    assert "| CE | -2.0, +3.0, -2.0 | -0.3 ± 2.9 | -7.5 to +6.8 | 1 of 3 |" in md
    assert "| balanced CE, alpha 0.75 | -2.0, -2.0, - | -2.0 ± 0.0 | -2.0 to -2.0 | 0 of 2 |" in md
    # A difference that prints as +0.0 is not a seed ahead.
    from retina_plugin.ablations.paired import format_differences

    assert format_differences([0.02, -0.3, None]) == ["+0.0, -0.3, -", "-0.1 ± 0.2", "-2.2 to +1.9", "0 of 2"]
    # The interval is the paired t one: mean -0.14, std 0.226 over 2 seeds, t(0.975, 1) = 12.7.
    assert format_differences([0.5, None, None]) == ["+0.5, -, -", "+0.5", "-", "1 of 1"]
    # Without seeds there is nothing to pair: the grid's own table only.
    md = open(write_reports(["headline"], results, str(tmp_path))["md"]).read()
    assert "seed by seed" not in md.lower()


def test_lines_logged_at_once_by_the_pool_and_the_progress_thread_stay_whole(tmp_path):
    import time
    import unittest.mock

    cells = tuple(Cell(f"FL, seed {seed}", (("SEED", seed),)) for seed in range(2))
    active, overlaps, lines = [0], [], []

    def log(line):  # as print() is: the line and its newline are two writes, apart in time
        active[0] += 1
        overlaps.append(active[0] > 1)
        time.sleep(0.01)
        lines.append(line)
        active[0] -= 1

    def run_cell(c, out_dir, *args, **kwargs):
        time.sleep(0.2)  # both runs finish together, while the progress thread logs
        return Result("ok", metrics_of(40.0))

    with unittest.mock.patch.dict(GRIDS, {"pair": Grid("pair", cells)}), \
            unittest.mock.patch.object(ablations.runner, "run_cell", run_cell):
        run_grids(["pair"], str(tmp_path), [], jobs=2, log=log, progress_every=0.005)
    assert sum(line.startswith("FL, seed") for line in lines) == 2
    assert len(lines) > 2 and not any(overlaps)


def test_t_quantile_matches_the_closed_forms_and_the_normal_limit():
    import statistics

    from retina_plugin.ablations.paired import t_quantile

    for p in (0.6, 0.9, 0.975, 0.995):
        assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), abs=1e-5)  # Cauchy
        assert t_quantile(p, 2) == pytest.approx((2 * p - 1) * math.sqrt(2 / (4 * p * (1 - p))), abs=1e-5)
        assert t_quantile(p, 5000) == pytest.approx(statistics.NormalDist().inv_cdf(p), abs=1e-3)
    assert t_quantile(0.5, 3) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="0.5 <= p < 1"):
        t_quantile(0.3, 3)


def test_measured_regimes_say_what_the_schedule_check_found_there(tmp_path):
    from retina_plugin.ablations.regimes import Source, format_regimes, measured_regimes, schedule_gains

    def label(loss, iterations, lr="0.02", steps="steps at 2/3 and 8/9 (the paper's)"):
        return f"{loss}, no clipping, lr {lr}, {iterations} iterations, {steps}"

    bce, fl = "balanced CE, alpha 0.75", "FL gamma 2, alpha 0.25"
    # The labels here are the schedule grid's own: the pairing reads them.
    grid_labels = {cell.label for cell in GRIDS["schedule"].cells}
    assert {label(bce, 24000), label(bce, 48000), label(fl, 24000), label(fl, 48000)} <= grid_labels
    (tmp_path / "check").mkdir()
    with open(tmp_path / "check" / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["grid", "cell", "seed", "status", "AP"])
        writer.writerows([
            ("schedule", label(bce, 48000), 0, "ok", 84.6), ("schedule", label(bce, 24000), 0, "ok", 82.4),
            ("schedule", label(bce, 48000), 1, "ok", 83.0), ("schedule", label(bce, 24000), 1, "ok", 82.0),
            ("schedule", label(fl, 48000), 0, "not run", ""), ("schedule", label(fl, 24000), 0, "ok", 83.8),
            ("schedule", label(fl, 48000), 1, "ok", 85.0), ("schedule", label(fl, 24000), 1, "ok", 84.5),
            # Not a pair of the 24000-iteration runs: another learning rate, other steps, another length.
            ("schedule", label(fl, 48000, lr="0.005"), 0, "ok", 99.0),
            ("schedule", label(fl, 48000, steps="steps at 5/6 and 14/15"), 0, "ok", 99.0),
            ("schedule", label(fl, 12000), 0, "ok", 10.0), ("schedule", label(fl, 6000), 0, "ok", 1.0),
        ])
    gains = schedule_gains(str(tmp_path / "check" / "results.csv"), 24000)
    assert set(gains) == {bce, fl}
    assert gains[bce] == pytest.approx([2.2, 1.0]) and gains[fl] == pytest.approx([0.5])
    assert schedule_gains(str(tmp_path / "check" / "results.csv"), 6000) == {fl: [9.0]}
    assert schedule_gains(str(tmp_path / "check" / "results.csv"), 3000) == {}

    (tmp_path / "sweep").mkdir()
    with open(tmp_path / "sweep" / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["grid", "cell", "status", "AP", "neg_pairs_per_pos"])
        writer.writerows([("imbalance", f"retina_k48: {bce}", "ok", 82.4, 50000.0),
                          ("imbalance", f"retina_k48: {fl}", "ok", 83.8, 50000.0)])
    checks = {"retina_k48": "check/results.csv"}
    (regime,) = measured_regimes(50000.0, (Source("sweep/results.csv", "setup", iterations=24000),),
                                 root=str(tmp_path), checks=checks)
    assert regime["schedule"]["gains"] == gains and regime["schedule"]["source"] == "check/results.md"
    text = format_regimes(50000.0, [regime])
    assert "(24000 against 48000 iterations; converged when doubling gains under 1.5 AP)" in text
    assert f"{fl} +0.5 AP (1 seed: converged), {bce} +1.6 AP (2 seeds: not converged)" in text
    # Runs of another schedule, or a data set without a check, get no such sentence.
    for source, where in ((Source("sweep/results.csv", "setup", iterations=3000), checks),
                          (Source("sweep/results.csv", "setup"), checks),
                          (Source("sweep/results.csv", "setup", iterations=24000), {})):
        (regime,) = measured_regimes(50000.0, (source,), root=str(tmp_path), checks=where)
        assert regime["schedule"] is None and "checked there" not in format_regimes(50000.0, [regime])
    # The sweep's own report says it beside its table: at that data set, the runs are short.
    from retina_plugin.ablations.sweep_report import short_schedule_datasets, sweep_table

    k48 = {"retina_imbalance_k48_single": "check/results.csv"}
    md = "\n".join(sweep_table("imbalance", {}, seeds=2, checks=k48, root=str(tmp_path)))
    assert ("- `retina_imbalance_k48_single`: FL gamma 2, alpha 0.25 +0.5 AP (1 seed: converged), balanced CE, "
            "alpha 0.75 +1.6 AP (2 seeds: not converged); its row compares runs short of where they end "
            "(`check/results.md`)") in md
    assert "the same runs at twice the 24000 iterations" in md
    assert short_schedule_datasets("imbalance", checks=k48, root=str(tmp_path)) == ["retina_imbalance_k48_single"]
    # A sweep of another schedule (the from-scratch one's 3000 iterations) was not checked.
    assert "twice the" not in "\n".join(sweep_table("imbalance_scratch", {}, seeds=2, checks=k48, root=str(tmp_path)))
