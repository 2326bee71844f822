"""
LazyConfig (.py) configs for train_net.py: detectron2's trainers and hooks composed as
upstream's tools/lazyconfig_train_net.py composes them, with the plugin's safe checkpointer
(and its loss-normaliser state), its COCO evaluation engine, CPU and gloo fallbacks, and
errors that name the config key at fault. configs/lazy/ holds the configs.

In a LazyConfig the model is `L(FocalRetinaNet)(...)` with `cls_loss=L(FocalLoss)(alpha=...,
gamma=...)` and `head=L(RetinaHead)(..., cls_loss="${..cls_loss}")`: a loss variant is one
override (`model.cls_loss.gamma=0`) or one `_target_` swap, and the head follows the loss.
"""
import inspect
import logging
from collections import abc

import torch
from torch import nn

from detectron2.config import LazyConfig, instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from omegaconf import DictConfig, ListConfig

from .checkpoint import RandomStates, SafeDetectionCheckpointer
from .config import ConfigValueError
from .data.custom import explained_empty_training_set
from .data.sampler import instantiate_resumable_train_loader
from .losses import ClassificationLoss
from .preemption import PreemptionCheckpointer

logger = logging.getLogger("retina_plugin")

# Slots whose _target_ must be a class of a kind: the plugin reads them.
TARGET_KINDS = {"model": nn.Module, "model.head": nn.Module, "model.cls_loss": ClassificationLoss}


def load_lazy_config(path, overrides=()):
    """LazyConfig.load(path) with upstream's `key=value` overrides applied; a bad override is
    a ConfigValueError naming it."""
    cfg = LazyConfig.load(path)
    try:
        return LazyConfig.apply_overrides(cfg, list(overrides))
    except Exception as e:  # omegaconf's and Hydra's errors share no base class
        raise ConfigValueError(f"{path}: the overrides {list(overrides)} do not apply: {e}") from None


def _resolve_target(target, key):
    if isinstance(target, str):
        from detectron2.utils.registry import locate

        try:
            found = locate(target)
        except Exception:  # locate raises ImportError or its own errors
            found = None
        if found is None:
            raise ConfigValueError(f"{key}._target_ = {target!r} is not allowed: it names nothing that can be imported.")
        return found
    return target


def _accepted_arguments(target):
    """The keyword arguments a callable takes, following **kwargs into base classes' __init__
    (FocalRetinaNet passes them on to RetinaNet); None when it takes any."""
    functions = [c.__init__ for c in inspect.getmro(target) if "__init__" in vars(c)] if inspect.isclass(target) else [target]
    names = set()
    for function in functions:
        try:
            parameters = inspect.signature(function).parameters.values()
        except (TypeError, ValueError):
            return None
        names |= {p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} - {"self"}
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            return names
    return None


def _key_of(value, default):
    """The config key of a node: where an interpolation ("${..cls_loss}") points, if it does."""
    if isinstance(value, DictConfig):
        full_key = value._get_full_key(None)
        return str(full_key) if full_key else default
    return default


def build_lazy(node, key="model"):
    """
    detectron2's instantiate, one `_target_` at a time, so that a bad config names its key:
    a target that imports nothing or is not the kind of class the plugin needs (TARGET_KINDS),
    an argument the target does not take, a value it refuses.
    """
    if isinstance(node, (ListConfig, list)):
        return [build_lazy(item, f"{key}[{i}]") for i, item in enumerate(node)]
    if not (isinstance(node, abc.Mapping) and "_target_" in node):
        return node
    target = _resolve_target(node["_target_"], key)
    kind = TARGET_KINDS.get(key)
    if kind is not None and not (inspect.isclass(target) and issubclass(target, kind)):
        raise ConfigValueError(
            f"{key}._target_ = {getattr(target, '__qualname__', target)!r} is not allowed: use a "
            f"subclass of {kind.__module__}.{kind.__qualname__}."
        )
    if not callable(target):
        raise ConfigValueError(f"{key}._target_ = {target!r} is not allowed: it is not callable.")
    accepted = _accepted_arguments(target)
    unknown = sorted(k for k in node if k != "_target_" and accepted is not None and k not in accepted)
    if unknown:
        raise ConfigValueError(
            f"{key}.{unknown[0]} is not allowed: {target.__qualname__} takes no argument "
            f"{unknown[0]!r}; it takes {', '.join(sorted(accepted))}."
        )
    arguments = {k: build_lazy(v, _key_of(v, f"{key}.{k}")) for k, v in node.items() if k != "_target_"}
    try:
        return target(**arguments)
    except ConfigValueError as e:
        raise ConfigValueError(f"{key} ({target.__qualname__}): {e}") from None
    except (TypeError, ValueError, AssertionError) as e:
        raise ConfigValueError(f"{key} ({target.__qualname__}) cannot be built from its arguments: {e}") from None


def sgd_with_gradient_clipping(params, clip_value=5.0, clip_type="norm", norm_type=2.0, **sgd_arguments):
    """torch.optim.SGD with detectron2's gradient clipping (a yaml's SOLVER.CLIP_GRADIENTS), as
    a LazyConfig's optimizer target: `optimizer._target_ = sgd_with_gradient_clipping`."""
    from detectron2.config import get_cfg
    from detectron2.solver.build import maybe_add_gradient_clipping

    clipping = get_cfg()
    clipping.SOLVER.CLIP_GRADIENTS.ENABLED = True
    clipping.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type
    clipping.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = clip_value
    clipping.SOLVER.CLIP_GRADIENTS.NORM_TYPE = norm_type
    return maybe_add_gradient_clipping(clipping, torch.optim.SGD)(params, **sgd_arguments)


def build_lazy_model(cfg):
    model = build_lazy(cfg.model, "model")
    model.to(torch.device(cfg.train.device))
    logger.info(f"Model:\n{model}")
    return model


def evaluate_lazy(cfg, model):
    """Evaluate `model` with cfg.dataloader.test and .evaluator (when the config has them)."""
    if "evaluator" not in cfg.dataloader:
        return {}
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
    if comm.is_main_process():
        print_csv_format(results)
    return results


def train_lazy(cfg, resume, create_ddp_model):
    """Train cfg.model as detectron2's lazy tool does, with the plugin's checkpointer; the
    EvalHook evaluates every cfg.train.eval_period iterations and after the last."""
    model = build_lazy_model(cfg)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    names = cfg.dataloader.train.dataset.get("names", ()) if "dataset" in cfg.dataloader.train else ()
    with explained_empty_training_set([names] if isinstance(names, str) else list(names)):
        train_loader = instantiate_resumable_train_loader(cfg.dataloader.train)
    ddp_model = create_ddp_model(model, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(ddp_model, train_loader, optimizer)
    checkpointables = {"trainer": trainer, "random_states": RandomStates(after_evaluation=True)}
    if hasattr(model, "normalizer_checkpointable"):
        checkpointables["loss_normalizer"] = model.normalizer_checkpointable()
    checkpointer = SafeDetectionCheckpointer(model, cfg.train.output_dir, **checkpointables)
    main = comm.is_main_process()
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            # The checkpoint after the evaluation, which draws from NumPy's random state too
            # (checkpoint.write_checkpoints_after_evaluation): a resumed run continues exactly.
            hooks.EvalHook(cfg.train.eval_period, lambda: evaluate_lazy(cfg, model)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main else None,
            hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period)
            if main
            else None,
            PreemptionCheckpointer(checkpointer),
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    if train_loader.resumable_sampler is not None:  # the batches an uninterrupted run would train on next
        train_loader.resumable_sampler.start = start_iter * cfg.dataloader.train.total_batch_size // comm.get_world_size()
    trainer.train(start_iter, cfg.train.max_iter)
