"""A run interrupted after a checkpoint and resumed with --resume ends where an uninterrupted
run ends: weights, optimizer and scheduler (detectron2's), and the loss normaliser (ours)."""
import importlib.util
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from detectron2.engine import HookBase

from retina_plugin.data import make_categories, register_coco_dataset, write_synthetic_coco
from retina_plugin.preemption import PREEMPTED_EXIT_CODE, Preempted, PreemptionCheckpointer

from helpers import REPO

pytestmark = pytest.mark.slow


def load_train_net():
    spec = importlib.util.spec_from_file_location("train_net", os.path.join(REPO, "train_net.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class CrashAfter(HookBase):
    """Stops training with an error after iteration `iteration`, as a killed process would."""

    def __init__(self, iteration):
        self.iteration = iteration

    def after_step(self):
        if self.trainer.iter == self.iteration:
            raise KeyboardInterrupt(f"interrupted after iteration {self.iteration}")


def registered_shapes(tmp_path_factory, name, num_images, objects, distractors):
    """A synthetic data set of `num_images` 96 px images, registered as `name`."""
    root = tmp_path_factory.mktemp(name)
    categories = [{"id": c["id"], "name": c["name"]} for c in make_categories(6)]
    write_synthetic_coco(
        root / "images", root / "a.json", categories, num_images, image_size=(96, 96),
        objects=objects, distractors=distractors, sizes=(12, 40), empty_prob=0.0, seed=0,
    )
    register_coco_dataset(name, str(root / "a.json"), str(root / "images"))
    return name


@pytest.fixture(scope="module")
def one_image_dataset(tmp_path_factory):
    # One image, batch 1, no flip: every iteration sees the same batch.
    return registered_shapes(tmp_path_factory, "resume_one_image", 1, (6, 6), (2, 2))


@pytest.fixture(scope="module")
def six_images_dataset(tmp_path_factory):
    # Six images in batches of 2 with random flips: a resumed run trains on the batches and
    # flips of an uninterrupted one only if it continues the sampler's stream and the random state.
    return registered_shapes(tmp_path_factory, "resume_six_images", 6, (3, 6), (1, 2))


def one_image_args(train_net, out, *extra, dataset="resume_one_image", batch=1, evaluate=False):
    """train_net arguments: the quickstart model on `dataset` (default the one-image set), batch 1;
    with `evaluate`, evaluated on `dataset` every 4 iterations."""
    test = ("DATASETS.TEST", f'("{dataset}",)', "TEST.EVAL_PERIOD", "4") if evaluate else ("DATASETS.TEST", "()")
    return train_net.argument_parser().parse_args(
        [
            "--config-file", os.path.join(REPO, "configs", "quickstart.yaml"), *extra,
            "SEED", "0", "OUTPUT_DIR", str(out), "SOLVER.IMS_PER_BATCH", str(batch),
            "DATASETS.TRAIN", f'("{dataset}",)', *test,
            "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "96",
        ]
    )


SCHEDULE = (
    "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "3",
    "SOLVER.WARMUP_ITERS", "2", "SOLVER.STEPS", "(4,)", "INPUT.RANDOM_FLIP", "none",
    "MODEL.RETINANET.LOSS_NORMALIZER_MOMENTUM", "0.5",
)


class RecordLosses(HookBase):
    """Keeps each iteration's total loss in trainer.losses."""

    def before_train(self):
        self.trainer.losses = {}

    def after_step(self):
        self.trainer.losses[self.trainer.iter] = self.trainer.storage.history("total_loss").latest()


# Six images, batches of 2, random flips: resuming must continue the data and the random state.
SHUFFLED = dict(dataset="resume_six_images", batch=2, flip=True)


def train(train_net, out, resume=False, crash_after=None, dataset="resume_one_image", batch=1, flip=False,
          evaluate=False, overrides=(), before_training=None):
    """Train with SCHEDULE and `overrides`; `before_training(cfg)` runs once the config is set up."""
    flips = ("INPUT.RANDOM_FLIP", "horizontal") if flip else ()
    args = one_image_args(train_net, out, *(["--resume"] if resume else []), *SCHEDULE, *flips, *overrides,
                          dataset=dataset, batch=batch, evaluate=evaluate)
    cfg = train_net.setup(args)
    if before_training is not None:
        before_training(cfg)
    trainer = train_net.Trainer(cfg)
    trainer.register_hooks([RecordLosses()])
    if crash_after is not None:
        trainer.register_hooks([CrashAfter(crash_after)])
    trainer.resume_or_load(resume=args.resume)
    try:
        trainer.train()
    except KeyboardInterrupt:
        pass
    return trainer


def test_resumed_run_ends_where_an_uninterrupted_run_ends_on_shuffled_flipped_batches(six_images_dataset, tmp_path):
    train_net = load_train_net()
    straight = train(train_net, tmp_path / "straight", **SHUFFLED)

    interrupted = tmp_path / "interrupted"
    train(train_net, interrupted, crash_after=4, **SHUFFLED)
    assert (interrupted / "model_0000002.pth").is_file()
    assert not (interrupted / "model_final.pth").exists()
    resumed = train(train_net, interrupted, resume=True, **SHUFFLED)
    assert resumed.start_iter == 3
    # The same batches and flips as the uninterrupted run: the same losses.
    assert resumed.losses == pytest.approx({i: straight.losses[i] for i in range(3, 6)})

    assert resumed.model.loss_normalizer_ema == pytest.approx(straight.model.loss_normalizer_ema)
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, msg=key)


def test_a_run_resumed_from_an_evaluations_checkpoint_ends_where_an_uninterrupted_run_ends(six_images_dataset, tmp_path):
    # The evaluation at iteration 3 draws from NumPy's random state (the test resize picks its
    # size with it): a checkpoint written before it would resume with other flips after it.
    train_net = load_train_net()
    # 12 flips after the resume: other random draws would flip another image almost surely.
    every_4 = ("SOLVER.CHECKPOINT_PERIOD", "4", "SOLVER.MAX_ITER", "10")
    straight = train(train_net, tmp_path / "straight", evaluate=True, overrides=every_4, **SHUFFLED)
    interrupted = tmp_path / "interrupted"
    train(train_net, interrupted, crash_after=4, evaluate=True, overrides=every_4, **SHUFFLED)
    saved = torch.load(interrupted / "model_0000003.pth", map_location="cpu", weights_only=True)
    assert saved["random_states"]["after_evaluation"] is True
    resumed = train(train_net, interrupted, resume=True, evaluate=True, overrides=every_4, **SHUFFLED)
    assert resumed.start_iter == 4
    assert resumed.losses == pytest.approx({i: straight.losses[i] for i in range(4, 10)})
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, msg=key)


def test_a_diverging_run_stops_with_the_causes_and_keeps_its_checkpoint(one_image_dataset, tmp_path):
    train_net = load_train_net()
    args = one_image_args(
        train_net, tmp_path, "SOLVER.MAX_ITER", "40", "SOLVER.CHECKPOINT_PERIOD", "1",
        "SOLVER.WARMUP_ITERS", "0", "SOLVER.BASE_LR", "1e6", "SOLVER.CLIP_GRADIENTS.ENABLED", "False",
    )
    trainer = train_net.Trainer(train_net.setup(args))
    trainer.resume_or_load(resume=False)
    with pytest.raises(FloatingPointError) as error:
        trainer.train()
    message = str(error.value)
    assert "Loss became infinite or NaN at iteration=" in message and "loss_cls" in message
    assert "SOLVER.BASE_LR = 1000000.0" in message and "PRIOR_PROB = 0.01" in message
    last = trainer.checkpointer.get_checkpoint_file()
    assert f"The last good checkpoint, untouched: {last}" in message
    # The checkpoint loads, and its weights are finite.
    state = torch.load(last, map_location="cpu", weights_only=False)["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


class SignalAfter(HookBase):
    """Sends this process `signum` after iteration `iteration`, as a cluster preempting the job."""

    def __init__(self, iteration, signum=signal.SIGTERM):
        self.iteration, self.signum = iteration, signum

    def after_step(self):
        if self.trainer.iter == self.iteration:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_preempted_run_saves_where_it_stopped_and_resumes_exactly(six_images_dataset, tmp_path, signum):
    train_net = load_train_net()
    straight = train(train_net, tmp_path / "straight", **SHUFFLED)

    out = tmp_path / "preempted"
    args = one_image_args(train_net, out, *SCHEDULE, "INPUT.RANDOM_FLIP", "horizontal", dataset=six_images_dataset, batch=2)
    trainer = train_net.Trainer(train_net.setup(args))
    trainer.register_hooks([RecordLosses(), SignalAfter(0, signum)])
    saves = []
    real_save = trainer.checkpointer.save

    def save_while_signalled_again(name, **kwargs):
        saves.append(name)
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal while saving changes nothing
        return real_save(name, **kwargs)

    trainer.checkpointer.save = save_while_signalled_again
    trainer.resume_or_load(resume=False)
    with pytest.raises(Preempted) as stopped:
        trainer.train()
    # The hook that sent the signal runs after the preemption hook: it stops after the next iteration.
    assert stopped.value.iteration == 1 and saves == ["model_0000001"]
    message = str(stopped.value)
    assert f"Received {signal.Signals(signum).name}: stopped after iteration 1 and saved {out / 'model_0000001.pth'}" in message
    assert "Continue with: " in message and "--resume" in message
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"
    assert torch.load(out / "model_0000001.pth", weights_only=False)["iteration"] == 1
    # The signal handlers are given back when training stops.
    preemption = next(h for h in trainer._hooks if isinstance(h, PreemptionCheckpointer))
    assert signal.getsignal(signal.SIGTERM) != preemption._on_signal

    assert trainer.losses == pytest.approx({0: straight.losses[0]})
    resumed = train(train_net, out, resume=True, **SHUFFLED)
    assert resumed.start_iter == 2
    # The next iterations' losses are the uninterrupted run's.
    assert resumed.losses == pytest.approx({i: straight.losses[i] for i in range(2, 6)})
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, msg=key)


def test_train_net_exits_with_the_preemption_status_and_resumes(one_image_dataset, tmp_path):
    data = tmp_path / "data"
    categories = [{"id": c["id"], "name": c["name"]} for c in make_categories(3)]
    write_synthetic_coco(data / "images", data / "train.json", categories, 4, image_size=(64, 64),
                         objects=(2, 4), distractors=(0, 1), sizes=(12, 30), empty_prob=0.0, seed=0)
    out = tmp_path / "run"
    command = [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file",
               os.path.join(REPO, "configs", "quickstart.yaml"), "--dataset", "pre_train", str(data / "train.json"),
               str(data / "images"), "DATASETS.TRAIN", '("pre_train",)', "DATASETS.TEST", "()", "SEED", "0",
               "SOLVER.IMS_PER_BATCH", "2", "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
               "SOLVER.MAX_ITER", "100000", "OUTPUT_DIR", str(out)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "metrics.json").exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == PREEMPTED_EXIT_CODE, log[-3000:]
    saved = (out / "last_checkpoint").read_text()
    iteration = torch.load(out / saved, weights_only=False)["iteration"]
    assert f"Received SIGTERM: stopped after iteration {iteration} and saved {out / saved}" in log
    assert "Traceback" not in log
    resumed = subprocess.run([*command[:2], "--resume", *command[2:-4], "SOLVER.MAX_ITER", str(iteration + 3),
                              "OUTPUT_DIR", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Starting training from iteration {iteration + 1}" in resumed.stdout + resumed.stderr
