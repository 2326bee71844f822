"""A run that starts from the checkpoint of a run of another schedule, inside the iterations
both share, ends where it would have ended trained from the start (ablations/prefix.py)."""
import json
import os

import pytest
import torch

from retina_plugin.ablations.configs import resolved_config
from retina_plugin.checkpoint import RandomStates
from retina_plugin.ablations.prefix import (
    PREFIX_FILE, lr_multipliers, shared_checkpoint, shared_prefix_of, start_from_shared_prefix,
)

from helpers import REPO
from test_resume import SHUFFLED, load_train_net, registered_shapes, train

SPARSE = os.path.join(REPO, "configs", "sparse.yaml")


def schedule(max_iter, steps, *more):
    return ["SOLVER.MAX_ITER", str(max_iter), "SOLVER.STEPS", f"({', '.join(map(str, steps))},)", *more]


def test_the_learning_rate_is_shared_until_the_first_step_of_either_schedule():
    short = resolved_config(SPARSE, (), schedule(3000, (2500, 2800)))
    long = resolved_config(SPARSE, (), schedule(6000, (5000, 5600)))
    ours, theirs = lr_multipliers(short, 3000), lr_multipliers(long, 3000)
    assert ours[:2500] == theirs[:2500]
    assert ours[0] < ours[99] < ours[100] == 1.0  # the warmup, the same in both
    assert ours[2500] == pytest.approx(0.1) and theirs[2500] == 1.0


def fake_run(directory, cfg, iterations, after_evaluation=True):
    """A run directory with `cfg`'s config.yaml and checkpoints after `iterations`."""
    os.makedirs(directory)
    with open(os.path.join(directory, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    for k in iterations:
        torch.save({"random_states": {"after_evaluation": after_evaluation}}, os.path.join(directory, f"model_{k:07d}.pth"))
    return str(directory)


def test_only_a_run_that_differs_in_its_schedule_shares_a_checkpoint_inside_the_shared_rate(tmp_path):
    cfg = resolved_config(SPARSE, (), schedule(3000, (2500, 2800)))
    every_500 = range(499, 6000, 500)
    longer = fake_run(tmp_path / "longer", resolved_config(SPARSE, (), schedule(6000, (5000, 5600))), every_500)
    other_loss = fake_run(tmp_path / "gamma_0", resolved_config(SPARSE, (), schedule(6000, (5000, 5600), "MODEL.RETINANET.FOCAL_LOSS_GAMMA", "0.0")), every_500)
    other_lr = fake_run(tmp_path / "lr", resolved_config(SPARSE, (), schedule(6000, (5000, 5600), "SOLVER.BASE_LR", "0.01")), every_500)
    same = fake_run(tmp_path / "same", cfg, every_500)
    # Iteration 2499's checkpoint: iterations 0 .. 2499 had the same rate; 2500 is divided by 10 here only.
    assert shared_checkpoint(cfg, [other_loss, other_lr, same, longer]) == (longer, 2499, os.path.join(longer, "model_0002499.pth"))
    assert shared_checkpoint(cfg, [other_loss, other_lr, same]) is None
    # The other way round: twice the schedule from this one's checkpoints, up to 4999 shared.
    twice = resolved_config(SPARSE, (), schedule(12000, (10000, 11200)))
    longer_twice = fake_run(tmp_path / "twice", resolved_config(SPARSE, (), schedule(6000, (5000, 5600))), every_500)
    assert shared_checkpoint(twice, [longer_twice])[1] == 4999
    # A checkpoint written before its iteration's evaluation (an older trainer) is taken: its
    # random states are replayed past the evaluation (the slow test below). One without random
    # states at an evaluation's iteration is not: a run from it would draw other flips.
    before = fake_run(tmp_path / "before", resolved_config(SPARSE, (), schedule(6000, (5000, 5600))), every_500, after_evaluation=False)
    assert shared_checkpoint(cfg, [before])[1] == 2499
    stateless = fake_run(tmp_path / "stateless", resolved_config(SPARSE, (), schedule(6000, (5000, 5600))), every_500)
    for k in every_500:
        torch.save({}, os.path.join(stateless, f"model_{k:07d}.pth"))
    assert shared_checkpoint(cfg, [stateless]) is None
    # Without an evaluation there, its states are the next iteration's.
    no_evaluation = resolved_config(SPARSE, (), schedule(3000, (2500, 2800), "TEST.EVAL_PERIOD", "0"))
    stateless_no_evaluation = fake_run(tmp_path / "no_eval", resolved_config(
        SPARSE, (), schedule(6000, (5000, 5600), "TEST.EVAL_PERIOD", "0")), every_500)
    for k in every_500:
        torch.save({}, os.path.join(stateless_no_evaluation, f"model_{k:07d}.pth"))
    assert shared_checkpoint(no_evaluation, [stateless_no_evaluation])[1] == 2499


@pytest.fixture(scope="module")
def six_images(tmp_path_factory):
    return registered_shapes(tmp_path_factory, "prefix_six_images", 6, (3, 6), (1, 2))


@pytest.mark.slow
@pytest.mark.parametrize("older_trainer", [False, True], ids=["checkpoint_after_evaluation", "checkpoint_before_evaluation"])
def test_a_run_started_from_a_longer_schedules_checkpoint_ends_as_if_trained_from_the_start(six_images, tmp_path, monkeypatch, older_trainer):
    train_net = load_train_net()
    data = {**SHUFFLED, "dataset": six_images, "evaluate": True}
    # Checkpoints and evaluations every 4 iterations: after iteration 3, the last before the
    # short schedule's step at 4; the long one steps at 8.
    short = ("SOLVER.MAX_ITER", "8", "SOLVER.STEPS", "(4,)", "SOLVER.CHECKPOINT_PERIOD", "4")
    long = ("SOLVER.MAX_ITER", "16", "SOLVER.STEPS", "(8,)", "SOLVER.CHECKPOINT_PERIOD", "4")
    straight = train(train_net, tmp_path / "cells" / "straight", overrides=short, **data)
    with monkeypatch.context() as older:
        if older_trainer:  # detectron2's order: the checkpoint, then the evaluation that draws
            older.setattr(train_net, "write_checkpoints_after_evaluation", list)
            older.setattr(train_net, "RandomStates", lambda after_evaluation: RandomStates(False))
        train(train_net, tmp_path / "cells" / "long", overrides=long, crash_after=5, **data)

    started = []
    forked = tmp_path / "cells" / "forked"

    def start_from_the_long_run(cfg):
        started.append(start_from_shared_prefix(str(forked), cfg, [str(tmp_path / "cells" / "long")], str(tmp_path)))

    resumed = train(train_net, forked, resume=True, overrides=short, before_training=start_from_the_long_run, **data)
    assert started[0].startswith("iterations 0 to 3 are those of cells/long")
    assert started[0].endswith("moved past the evaluation it was written before") == older_trainer
    donor = torch.load(tmp_path / "cells" / "long" / "model_0000003.pth", map_location="cpu", weights_only=True)
    taken = torch.load(forked / "model_0000003.pth", map_location="cpu", weights_only=True)
    assert taken["random_states"]["after_evaluation"] is True
    # Replayed: the evaluation's draws moved NumPy's state (its position or its keys).
    moved = taken["random_states"]["numpy"][2] != donor["random_states"]["numpy"][2] or not torch.equal(
        taken["random_states"]["numpy"][1], donor["random_states"]["numpy"][1])
    assert moved == older_trainer
    assert resumed.start_iter == 4
    assert resumed.losses == pytest.approx({i: straight.losses[i] for i in range(4, 8)})
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, msg=key)
    # The one schedule-dependent value was rewritten: the rate of iteration 4, divided by 10
    # here, not in the long run.
    lrs = [g["lr"] for g in donor["trainer"]["_trainer"]["optimizer"]["param_groups"]]
    assert resumed.storage.history("lr").values()[0][0] == pytest.approx(lrs[0] * 0.1)
    # The shared iterations' metrics come with it, and the run says where they came from.
    with open(forked / "metrics.json") as f:
        iterations = [json.loads(line)["iteration"] for line in f]
    assert iterations[0] < 4 and iterations[-1] >= 7
    assert json.loads((forked / PREFIX_FILE).read_text()) == {"from": os.path.join("cells", "long"), "iteration": 3}
    assert shared_prefix_of(str(forked)) == f"{os.path.join('cells', 'long')}, iterations 0-3"


def test_the_runner_starts_a_run_from_a_sibling_of_another_schedule_and_the_report_says_so(tmp_path):
    import unittest.mock

    from retina_plugin import ablations
    from retina_plugin.ablations import GRIDS, Result, run_grids, write_reports

    def config_of(cell):
        return resolved_config(SPARSE, (), cell.opts())

    cells = {c.label: c.with_seed(0) for c in GRIDS["schedule"].cells}
    short = cells["FL gamma 2, alpha 0.25, no clipping, lr 0.02, 3000 iterations, steps at 5/6 and 14/15"]
    long = cells["FL gamma 2, alpha 0.25, no clipping, lr 0.02, 6000 iterations, steps at 5/6 and 14/15"]
    # The paper's steps at 3000 (2000 and 2666) share iterations 0 .. 1999 with `long`.
    papers = cells["FL gamma 2, alpha 0.25, no clipping, lr 0.02, 3000 iterations, steps at 2/3 and 8/9 (the paper's)"]
    sibling = fake_run(tmp_path / "cells" / long.key, config_of(long), [1999, 2499, 2999])
    for k in (1999, 2499, 2999):  # as the trainer writes them: the optimizer holds the next iteration's rate
        path = os.path.join(sibling, f"model_{k:07d}.pth")
        torch.save({"random_states": {"after_evaluation": True}, "trainer": {
            "hooks": {"LRScheduler": {"base_lrs": [0.02], "last_epoch": k + 1}},
            "_trainer": {"optimizer": {"param_groups": [{"lr": 0.02}]}}}}, path)
    with open(os.path.join(sibling, "metrics.json"), "w") as f:
        f.writelines(json.dumps({"iteration": i, "total_loss": 1.0}) + "\n" for i in range(19, 3000, 20))
    trained, lines = [], []

    def run_cell(cell, out_dir, *args, **kwargs):  # trains nothing: what it would start from
        directory = ablations.run_dir.cell_dir(cell, out_dir)
        trained.append((cell.key, open(os.path.join(directory, "last_checkpoint")).read()
                        if os.path.isfile(os.path.join(directory, "last_checkpoint")) else None))
        return Result("ok", {"AP": 50.0}, shared_prefix_from=shared_prefix_of(directory))

    with unittest.mock.patch.object(ablations.runner, "run_cell", run_cell):
        results = run_grids(["schedule"], str(tmp_path), [], seeds=1, only=["3000 iterations"],
                            config_of=config_of, log=lines.append)
    assert (short.key, "model_0002499.pth") in trained
    assert (papers.key, "model_0001999.pth") in trained
    assert any(key != short.key and start is None for key, start in trained)  # balanced CE: no sibling
    saved = torch.load(tmp_path / "cells" / short.key / "model_0002499.pth", map_location="cpu", weights_only=True)
    assert saved["trainer"]["_trainer"]["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.002)
    assert any(line.startswith(f"{short.label}, seed 0: iterations 0 to 2499 are those of cells/{long.key}") for line in lines)
    report = open(write_reports(["schedule"], results, str(tmp_path), seeds=1)["md"]).read()
    # `long` has not finished: the report says where its iterations' records are instead.
    assert (f"{short.label} seed 0 took `cells/{long.key}, iterations 0-2499` (a run that did not finish, "
            "not kept: those iterations' records are in this run's metrics.json)") in report
    with open(os.path.join(sibling, "result.json"), "w") as f:
        json.dump(Result("ok", {"AP": 60.0}).__dict__, f)
    report = open(write_reports(["schedule"], results, str(tmp_path), seeds=1)["md"]).read()
    assert f"{short.label} seed 0 took `cells/{long.key}, iterations 0-2499`;" in report


def test_a_checkpoint_whose_evaluation_cannot_be_replayed_is_not_taken_and_the_log_says_why(tmp_path):
    import numpy as np

    opts = ("DATASETS.TEST", '("no_such_test_set",)')
    cfg = resolved_config(SPARSE, (), schedule(3000, (2500, 2800), *opts))
    before = fake_run(tmp_path / "cells" / "before", resolved_config(SPARSE, (), schedule(6000, (5000, 5600), *opts)), [2499])
    np.random.seed(123)
    written_before_evaluation = RandomStates(after_evaluation=False).state_dict()
    torch.save({"random_states": written_before_evaluation}, os.path.join(before, "model_0002499.pth"))
    np.random.seed(7)
    own = np.random.get_state()[1].copy()
    line = start_from_shared_prefix(str(tmp_path / "cells" / "run"), cfg, [before], str(tmp_path))
    assert line.startswith("trains from the start: the evaluation after iteration 2499 of cells/before could not be replayed")
    assert "no_such_test_set" in line
    assert not (tmp_path / "cells" / "run" / "last_checkpoint").exists()
    assert (np.random.get_state()[1] == own).all()  # this process's random state put back
