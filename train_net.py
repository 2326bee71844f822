#!/usr/bin/env python
"""
Train or evaluate a RetinaNet of retina_plugin with detectron2's trainer and COCOEvaluator.

    python train_net.py --config-file configs/retina_r101.yaml
    python train_net.py --config-file configs/retina_r50.yaml \
        --extra-config configs/losses/balanced_ce.yaml     # a loss variant on top
    python train_net.py --config-file configs/retina_r101.yaml --eval-only MODEL.WEIGHTS model.pth
    python train_net.py --config-file configs/quickstart.yaml \
        --dataset mine_train train.json images/ --dataset mine_val val.json images/ \
        DATASETS.TRAIN '("mine_train",)' DATASETS.TEST '("mine_val",)'
    python train_net.py --config-file configs/lazy/retina_r50.py model.cls_loss.gamma=0

Trailing KEY VALUE pairs override a yaml config, as in every detectron2 tool; a LazyConfig
(.py, configs/lazy/) takes key=value overrides, as detectron2's lazyconfig_train_net.py.
"""
import logging
import os
import subprocess
import sys

import retina_plugin  # first: it quiets dependencies' deprecation notices (see its __init__)

import torch

import detectron2.engine.defaults
import detectron2.utils.comm as comm
from detectron2.config import get_cfg
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.modeling import build_model
from detectron2.evaluation import verify_results
from detectron2.utils.logger import setup_logger

from retina_plugin.checkpoint import (
    CheckpointError, RandomStates, SafeDetectionCheckpointer, resume_mismatch, write_checkpoints_after_evaluation,
)
from retina_plugin.data import CheckedDatasetMapper, DatasetError, build_checked_test_loader, register_coco_dataset
from retina_plugin.config import changed_keys
from retina_plugin.data.custom import check_datasets_present, explained_empty_training_set, take_dataset_classes
from retina_plugin.data.sampler import build_resumable_train_loader
from retina_plugin.output_lock import OutputDirInUseError, OutputDirNotWritableError, lock_output_dir
from retina_plugin.preemption import PREEMPTED_EXIT_CODE, Preempted, PreemptionCheckpointer
from retina_plugin.pretrain import require_pretrained
from retina_plugin.evaluation import EngineCOCOEvaluator
from retina_plugin.lazy import build_lazy_model, evaluate_lazy, load_lazy_config, train_lazy
from retina_plugin.machine import MACHINE_PREFIX, describe_machine

logger = logging.getLogger("retina_plugin")


def create_ddp_model_on_any_device(model, **kwargs):
    """detectron2's create_ddp_model, which always passes device_ids=[local rank]: DDP refuses
    that for a model on the CPU (detectron2 issue 5146), so --num-gpus N without CUDA failed.
    A CPU model gets device_ids=None and trains over gloo, which launch() picks without CUDA."""
    if next(model.parameters()).device.type == "cpu":
        kwargs.setdefault("device_ids", None)
    return _create_ddp_model(model, **kwargs)


# DefaultTrainer.__init__ calls it by this module-level name, and offers no other way in.
_create_ddp_model = detectron2.engine.defaults.create_ddp_model
detectron2.engine.defaults.create_ddp_model = create_ddp_model_on_any_device


class Trainer(DefaultTrainer):
    def build_hooks(self):
        # DefaultTrainer.__init__ calls this once its checkpointer exists and before any hook
        # holds it: swap in the one that loads without running code from the file.
        old = self.checkpointer
        self.checkpointer = SafeDetectionCheckpointer(old.model, old.save_dir, **old.checkpointables)
        if isinstance(old.model, retina_plugin.FocalRetinaNet):
            # Saved with the weights, the optimizer and the scheduler: --resume continues it.
            self.checkpointer.checkpointables["loss_normalizer"] = old.model.normalizer_checkpointable()
        # And the random states the augmentation draws from: a resumed run draws what it would
        # have, from checkpoints written after the iteration's evaluation (which draws too).
        self.checkpointer.checkpointables["random_states"] = RandomStates(after_evaluation=True)
        # Last, after the writers: a preempted run's metrics are flushed by their after_train.
        return write_checkpoints_after_evaluation(super().build_hooks()) + [PreemptionCheckpointer(self.checkpointer)]

    def train(self):
        try:
            return super().train()
        except FloatingPointError as e:
            # detectron2 names the iteration and each loss term; add what to try and what is safe.
            cfg = self.cfg
            if self.checkpointer.has_checkpoint():
                kept = f"The last good checkpoint, untouched: {self.checkpointer.get_checkpoint_file()}"
            else:
                kept = "No checkpoint had been written yet."
            raise FloatingPointError(
                f"{e}\nLikely causes: a learning rate too high for this batch "
                f"(SOLVER.BASE_LR = {cfg.SOLVER.BASE_LR}, SOLVER.IMS_PER_BATCH = "
                f"{cfg.SOLVER.IMS_PER_BATCH}; try a lower one, a longer SOLVER.WARMUP_ITERS or "
                f"SOLVER.CLIP_GRADIENTS.ENABLED True); a missing prior initialisation "
                f"(MODEL.RETINANET.PRIOR_PROB = {cfg.MODEL.RETINANET.PRIOR_PROB}, the paper uses "
                f"0.01); boxes of zero or negative size in the training data.\n{kept} "
                f"Fix the cause, then continue from it with --resume."
            ) from e

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        sampler = getattr(self._trainer.data_loader, "resumable_sampler", None)
        if sampler is not None:  # the batches an uninterrupted run would train on next
            sampler.start = self.start_iter * self.cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()

    @classmethod
    def build_train_loader(cls, cfg):
        with explained_empty_training_set(cfg.DATASETS.TRAIN, cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS):
            return build_resumable_train_loader(cfg, CheckedDatasetMapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_checked_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        return EngineCOCOEvaluator(dataset_name, engine=cfg.TEST.COCO_EVAL_ENGINE, output_dir=output_folder)


def setup(args):
    # Checked and registered first, so that a bad file fails before anything else.
    own_datasets = {
        name: register_coco_dataset(name, json_file, image_root)
        for name, json_file, image_root in args.dataset or []
    }
    cfg = get_cfg()
    retina_plugin.add_retina_config(cfg)
    for path in [args.config_file, *(args.extra_config or [])]:
        retina_plugin.merge_config_file(cfg, path, allow_python_tags=args.allow_unsafe_yaml)
    retina_plugin.merge_config_list(cfg, args.opts)
    # The classes of --dataset files, unless the command line sets them (then checked).
    take_dataset_classes(cfg, own_datasets, args.opts)
    # Every key and the data sets' classes, before anything is built: all problems at once.
    retina_plugin.validate_config(cfg, datasets=True)
    if cfg.SOLVER.AMP.ENABLED and not torch.cuda.is_available():
        raise retina_plugin.ConfigValueError(
            "SOLVER.AMP.ENABLED = True is not allowed without CUDA: detectron2's AMPTrainer "
            "needs a GPU. Set SOLVER.AMP.ENABLED False on the CPU."
        )
    check_datasets_present((*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST))
    # detectron2's default device is "cuda"; on a machine without one, run on the CPU
    # instead of failing at the first tensor moved there.
    cpu_fallback = cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available()
    if cpu_fallback:
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    # Before anything is written there: one run per OUTPUT_DIR, and a resume that fits.
    if comm.get_rank() == 0:
        lock_output_dir(cfg.OUTPUT_DIR)
    if args.resume:
        refuse_mismatched_resume(
            build_model(cfg), cfg.OUTPUT_DIR,
            changed_keys(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), cfg),
        )
    # A pretrained backbone not made yet: say how, unless the run loads a checkpoint instead.
    loads_weights = not args.eval_only and not (args.resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")))
    pretrained = require_pretrained(cfg.MODEL.WEIGHTS, required=loads_weights)
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="retina_plugin")
    logger.info(MACHINE_PREFIX + describe_machine(cfg.MODEL.DEVICE))
    if pretrained:
        logger.info(pretrained)
    if cpu_fallback:
        logger.warning("No CUDA device is available: MODEL.DEVICE is set to 'cpu'.")
    return cfg


def refuse_mismatched_resume(model, output_dir, differences):
    """--resume into an OUTPUT_DIR whose checkpoint another config trained: refuse, naming
    what differs, instead of skipping the weights that do not fit and going on."""
    mismatch = resume_mismatch(model, output_dir)
    if mismatch is None:
        return
    keys = "; ".join(f"{k}: {old!r} then, {new!r} now" for k, old, new in differences[:6])
    raise CheckpointError(
        f"--resume would continue {mismatch}. It was trained with another config"
        + (f" ({keys})" if keys else "")
        + ". Resume with the config it was trained with, choose another OUTPUT_DIR, or pass "
        "--start-over to train from the config's initial weights in this OUTPUT_DIR (its "
        "checkpoints are then replaced as new ones are saved)."
    )


def lazy_dataset_names(cfg):
    """The data set names a LazyConfig's train and test loaders read."""
    names = []
    for split in ("train", "test"):
        dataset = cfg.dataloader.get(split, {}).get("dataset", {}) if "dataloader" in cfg else {}
        found = dataset.get("names", []) if hasattr(dataset, "get") else []
        names += [found] if isinstance(found, str) else list(found)
    return names


def setup_lazy(args):
    """A LazyConfig (.py) with upstream's `key=value` overrides, set up as setup() sets up a
    yaml config: --dataset registration and classes, CPU fallback, logging, outputs."""
    own_datasets = {
        name: register_coco_dataset(name, json_file, image_root)
        for name, json_file, image_root in args.dataset or []
    }
    if args.extra_config:
        raise retina_plugin.ConfigValueError(
            "--extra-config merges yaml files: with a LazyConfig (.py), override keys on the "
            "command line instead (for example model.cls_loss.gamma=0)."
        )
    cfg = load_lazy_config(args.config_file, args.opts)
    used = [n for n in lazy_dataset_names(cfg) if n in own_datasets]
    if used and not any(o.startswith("model.num_classes=") for o in args.opts):
        cfg.model.num_classes = len(own_datasets[used[0]])
    check_datasets_present(lazy_dataset_names(cfg))
    cpu_fallback = str(cfg.train.device).startswith("cuda") and not torch.cuda.is_available()
    if cpu_fallback:
        cfg.train.device = "cpu"
    if cfg.train.amp.enabled and not torch.cuda.is_available():
        raise retina_plugin.ConfigValueError(
            "train.amp.enabled = True is not allowed without CUDA: detectron2's AMPTrainer "
            "needs a GPU. Set train.amp.enabled=False on the CPU."
        )
    if comm.get_rank() == 0:
        lock_output_dir(cfg.train.output_dir)
    if args.resume:
        refuse_mismatched_resume(build_lazy_model(cfg), cfg.train.output_dir, [])
    default_setup(cfg, args)
    setup_logger(output=cfg.train.output_dir, distributed_rank=comm.get_rank(), name="retina_plugin")
    logger.info(MACHINE_PREFIX + describe_machine(cfg.train.device))
    if cpu_fallback:
        logger.warning("No CUDA device is available: train.device is set to 'cpu'.")
    return cfg


def main_lazy(args):
    cfg = setup_lazy(args)
    if args.eval_only:
        model = build_lazy_model(cfg)
        checkpointer = SafeDetectionCheckpointer(model, save_dir=cfg.train.output_dir)
        checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
        checkpointer.require_complete_load(cfg.train.init_checkpoint, key="train.init_checkpoint")
        return evaluate_lazy(cfg, model)
    return train_lazy(cfg, args.resume, create_ddp_model_on_any_device)


def report_outputs(cfg, trained):
    """Say where the run left what a user looks for next."""
    out = os.path.abspath(cfg.OUTPUT_DIR)
    lines = []
    if trained:
        lines.append(f"checkpoint:  {os.path.join(out, 'model_final.pth')}")
        lines.append(f"metrics:     {os.path.join(out, 'metrics.json')} (and TensorBoard events)")
    if cfg.DATASETS.TEST:
        lines.append(f"evaluation:  {os.path.join(out, 'inference')}")
    lines.append(f"log, config: {os.path.join(out, 'log.txt')}, {os.path.join(out, 'config.yaml')}")
    logger.info("Outputs:\n  " + "\n  ".join(lines))


def main(args):
    try:
        return train_or_evaluate(args)
    except Preempted:  # saved and logged by PreemptionCheckpointer
        sys.exit(PREEMPTED_EXIT_CODE)


def train_or_evaluate(args):
    if args.start_over:
        args.resume = False
    if args.config_file.endswith(".py"):
        return main_lazy(args)
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        checkpointer = SafeDetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        # Evaluating a model that the checkpoint only partly fills would report noise.
        checkpointer.require_complete_load(cfg.MODEL.WEIGHTS)
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
            report_outputs(cfg, trained=False)
        return results

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    results = trainer.train()
    if comm.is_main_process():
        report_outputs(cfg, trained=True)
    return results


def argument_parser():
    parser = default_argument_parser()
    parser.add_argument(
        "--extra-config",
        action="append",
        metavar="FILE",
        help="a yaml merged after --config-file, for example a loss variant from "
        "configs/losses/ (repeatable)",
    )
    parser.add_argument(
        "--allow-unsafe-yaml",
        action="store_true",
        help="let config files use any YAML Python object tag, which runs code, as detectron2 "
        "does (without it, the eval tag of detectron2's model-zoo yamls is evaluated by a "
        "restricted interpreter: numbers, arithmetic, lists): only for files you trust",
    )
    parser.add_argument(
        "--start-over",
        action="store_true",
        help="with --resume into an OUTPUT_DIR whose checkpoint another config trained: train "
        "from the config's initial weights instead of refusing (its checkpoints are replaced)",
    )
    parser.add_argument(
        "--slurm",
        action="store_true",
        help="under srun, one task per machine: take --num-machines, --machine-rank and the "
        "rendezvous address (--dist-url) from SLURM's environment",
    )
    parser.add_argument(
        "--dataset",
        nargs=3,
        action="append",
        metavar=("NAME", "JSON", "IMAGE_DIR"),
        help="register a COCO-format data set as NAME, to use in DATASETS.TRAIN/TEST "
        "(repeatable); MODEL.RETINANET.NUM_CLASSES is taken from its categories",
    )
    return parser


# Problems with the user's config, data, checkpoint or training, each raised with a message
# that names it and the fix: printed alone, not under a traceback that buries it.
USER_ERRORS = (
    retina_plugin.ConfigValueError, DatasetError, CheckpointError, OutputDirInUseError, OutputDirNotWritableError,
    FloatingPointError,
)


def apply_slurm_environment(args, environ=os.environ):
    """
    --slurm: set args.num_machines, machine_rank and dist_url from SLURM's environment, one task
    per machine (each task launches --num-gpus processes). Raises ConfigValueError naming what
    is inconsistent: not under srun, a --num-machines or --machine-rank that SLURM contradicts,
    several tasks per node with CUDA (each would take all the node's GPUs).
    """
    needed = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_JOB_NODELIST", "SLURM_JOB_ID")
    missing = [name for name in needed if name not in environ]
    if missing:
        raise retina_plugin.ConfigValueError(
            f"--slurm: {', '.join(missing)} not set, so this is not a task of srun. Run it as "
            f"`srun --nodes N --ntasks-per-node 1 python train_net.py --slurm ...`, or drop --slurm."
        )
    tasks, rank = int(environ["SLURM_NTASKS"]), int(environ["SLURM_PROCID"])
    problems = []
    if args.num_machines not in (1, tasks):
        problems.append(f"--num-machines {args.num_machines}, but SLURM runs {tasks} tasks (one per machine)")
    if args.machine_rank not in (0, rank):
        problems.append(f"--machine-rank {args.machine_rank}, but this is SLURM task {rank}")
    per_node = int(environ.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0].split(",")[0] or 1)
    if per_node > 1 and torch.cuda.is_available():
        problems.append(f"{per_node} tasks per node with CUDA: each task launches --num-gpus processes on "
                        f"all of its node's GPUs; use --ntasks-per-node 1")
    if problems:
        raise retina_plugin.ConfigValueError("--slurm: " + "; ".join(problems) + ".")
    args.num_machines, args.machine_rank = tasks, rank
    if args.dist_url == argument_parser().get_default("dist_url"):  # not set by hand: the first node's
        nodes = subprocess.run(["scontrol", "show", "hostnames", environ["SLURM_JOB_NODELIST"]],
                               capture_output=True, text=True).stdout.split()
        if not nodes:
            raise retina_plugin.ConfigValueError(
                f"--slurm: scontrol could not expand SLURM_JOB_NODELIST {environ['SLURM_JOB_NODELIST']!r}: "
                f"pass the rendezvous address with --dist-url tcp://HOST:PORT."
            )
        args.dist_url = f"tcp://{nodes[0]}:{20000 + int(environ['SLURM_JOB_ID']) % 20000}"
    return args


if __name__ == "__main__":
    args = argument_parser().parse_args()
    print("Command Line Args:", args)
    try:
        if args.slurm:
            apply_slurm_environment(args)
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except USER_ERRORS as e:
        print(f"\ntrain_net.py: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except torch.multiprocessing.ProcessExitedException as e:
        # A process of --num-gpus N was preempted (it saved and said so): exit as it did.
        if e.exit_code != PREEMPTED_EXIT_CODE:
            raise
        sys.exit(PREEMPTED_EXIT_CODE)
