"""
Checkpoints loaded without running code from the file.

detectron2 reads .pkl checkpoints (its model zoo's and Detectron1's) with pickle.load, which
runs whatever callable the file names. SafeDetectionCheckpointer first reads a .pkl with an
unpickler that allows only what such checkpoints hold (numpy arrays, dtypes and plain
containers), then lets detectron2 load it as before. .pth files go through torch.load, whose
weights-only mode refuses code already; both kinds get clear errors when refused, truncated or
missing. It also writes atomically: an interrupted save never replaces a good checkpoint.
"""
import io
import os
import pickle
import random
from typing import Optional

import numpy as np
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

# What genuine detectron2 / Detectron1 .pkl checkpoints unpickle: arrays and their parts.
ALLOWED_PICKLE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the fix."""


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in ALLOWED_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it names {module}.{name}, which a checkpoint never needs")


def check_pickle_holds_only_arrays(data: bytes):
    """Unpickle `data` allowing only numpy arrays and containers; raise UnpicklingError else."""
    _ArraysOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()


class SafeDetectionCheckpointer(DetectionCheckpointer):
    """
    detectron2's DetectionCheckpointer, loading without running code from the file, with clear
    errors; `incompatible` holds the missing, unexpected and mis-shaped keys of the last load.
    """

    incompatible = None

    def load(self, path, *args, **kwargs):
        if path and not (os.path.isfile(path) or PathManager.isfile(path)):
            if "://" not in path:  # URLs (detectron2://, https://) are fetched by detectron2
                raise CheckpointError(f"Checkpoint {path!r} does not exist: check MODEL.WEIGHTS.")
        return super().load(path, *args, **kwargs)

    def resume_or_load(self, path, *, resume=True):
        if resume and self.has_checkpoint() and "://" not in self.save_dir:
            last = self.get_checkpoint_file()
            if not os.path.isfile(last):
                raise CheckpointError(
                    f"--resume: {os.path.join(self.save_dir, 'last_checkpoint')} names {last}, which "
                    f"does not exist (moved or deleted). Restore that file to continue the run, or "
                    f"pass --start-over to train again from MODEL.WEIGHTS ({path or 'none'}) in "
                    f"this OUTPUT_DIR."
                )
        return super().resume_or_load(path, resume=resume)

    def _load_file(self, filename):
        try:
            if filename.endswith(".pkl"):
                with PathManager.open(filename, "rb") as f:
                    check_pickle_holds_only_arrays(f.read())
            return super()._load_file(filename)
        except pickle.UnpicklingError as e:
            if "Weights only load failed" in str(e) or "a checkpoint never needs" in str(e):
                reason = str(e).split("\n")[0] if ".pkl" in filename else "it would run code"
                raise CheckpointError(
                    f"Checkpoint {filename} was refused: {reason}. Loading it could run code "
                    f"from the file. Use checkpoints from sources you trust, saved by "
                    f"detectron2 or torch.save of tensors."
                ) from None
            raise self._unreadable(filename, e) from None
        except (EOFError, RuntimeError, ValueError) as e:
            raise self._unreadable(filename, e) from None

    @staticmethod
    def _unreadable(filename, error):
        return CheckpointError(
            f"Checkpoint {filename} cannot be read ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}): it is truncated or not a "
            f"detectron2 / PyTorch checkpoint. Use a complete file, or the previous checkpoint."
        )

    def save(self, name, **kwargs):
        """fvcore's Checkpointer.save, but written to a temporary file renamed into place, so
        that an interrupted write leaves the previous file (and last_checkpoint) as they were."""
        if not self.save_dir or not self.save_to_disk:
            return
        if "://" in self.save_dir:  # remote storage: no atomic rename to rely on
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {path}")
        previous = self.get_checkpoint_file() if self.has_checkpoint() else None
        try:
            _write_atomically(path, lambda f: torch.save(data, f))
            self.tag_last_checkpoint(basename)
        except (OSError, RuntimeError) as e:  # disk full, quota, permissions, a vanished folder
            # torch.save's zip writer reports a failed write as a RuntimeError over the OSError.
            error = e if isinstance(e, OSError) else e.__context__
            if not isinstance(error, OSError):
                raise
            kept = f"The previous checkpoint is intact: {previous}." if previous else "No checkpoint had been written before."
            raise CheckpointError(
                f"Could not write checkpoint {path}: {error.strerror or error}. {kept} Free space "
                f"in {self.save_dir} (or choose another OUTPUT_DIR), then continue with --resume."
            ) from None

    def tag_last_checkpoint(self, last_filename_basename):
        if "://" in self.save_dir:
            return super().tag_last_checkpoint(last_filename_basename)
        path = os.path.join(self.save_dir, "last_checkpoint")
        _write_atomically(path, lambda f: f.write(last_filename_basename.encode()))

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible

    def require_complete_load(self, path, key="MODEL.WEIGHTS"):
        """Raise CheckpointError unless the last load gave every weight of the model its value."""
        incompatible = self.incompatible
        if incompatible is None:
            raise CheckpointError(f"No weights were loaded from {path!r}: set {key}.")
        problems = []
        if incompatible.incorrect_shapes:
            key, in_file, in_model = incompatible.incorrect_shapes[0]
            problems.append(
                f"{len(incompatible.incorrect_shapes)} weights of other shapes (e.g. {key}: "
                f"{tuple(in_file)} in the file, {tuple(in_model)} in the model)"
            )
        elif incompatible.missing_keys:
            problems.append(
                f"{len(incompatible.missing_keys)} weights missing (e.g. {incompatible.missing_keys[0]})"
            )
        if problems:
            raise CheckpointError(
                f"Checkpoint {path} does not fit this model: {'; '.join(problems)}. Use the "
                f"config it was trained with (backbone depth, NUM_CLASSES, anchors, head)."
            )


class RandomStates:
    """
    Python's, NumPy's and torch's global random states as a checkpointable, so that a resumed
    run draws the augmentation (detectron2's transforms use NumPy's) of an uninterrupted one.
    Stored as tensors and plain numbers: torch.load's weights-only mode reads them. One
    process's states: with several, the other processes take the main one's.

    `after_evaluation`: the trainer writes its checkpoints after the iteration's evaluation
    (write_checkpoints_after_evaluation), and the saved states say so: an evaluation draws from
    NumPy's state too, so only then are they the states the next iteration draws from.
    """

    def __init__(self, after_evaluation=False):
        self.after_evaluation = after_evaluation

    def state_dict(self):
        version, python_state, gauss = random.getstate()
        kind, keys, position, has_gauss, cached = np.random.get_state()
        state = {
            "python": [version, torch.tensor(python_state, dtype=torch.int64), gauss],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
            "torch": torch.get_rng_state(),
            "after_evaluation": self.after_evaluation,
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state):
        version, python_state, gauss = state["python"]
        random.setstate((version, tuple(python_state.tolist()), gauss))
        kind, keys, position, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])


def write_checkpoints_after_evaluation(hook_list):
    """
    `hook_list` with its PeriodicCheckpointer moved after its EvalHook. detectron2 checkpoints
    first, to keep a checkpoint should the evaluation fail; but the evaluation draws from NumPy's
    random state (the test mapper's ResizeShortestEdge picks its size with np.random.choice),
    so a checkpoint written before it holds a state the uninterrupted run has moved past, and a
    run resumed from it flips other images than the uninterrupted run from there on. Written
    after it, the checkpoint resumes exactly; a failed evaluation loses one checkpoint period.
    """
    from detectron2.engine import hooks

    checkpointers = [h for h in hook_list if isinstance(h, hooks.PeriodicCheckpointer)]
    evaluations = [i for i, h in enumerate(hook_list) if isinstance(h, hooks.EvalHook)]
    if not checkpointers or not evaluations:
        return list(hook_list)
    reordered = [h for h in hook_list if h not in checkpointers]
    last_evaluation = max(i for i, h in enumerate(reordered) if isinstance(h, hooks.EvalHook))
    return reordered[: last_evaluation + 1] + checkpointers + reordered[last_evaluation + 1:]


def resume_mismatch(model, save_dir) -> Optional[str]:
    """
    What keeps `model` from resuming the last checkpoint in `save_dir`, or None (also when
    there is none): weights of other shapes (another NUM_CLASSES, another loss's logits) and
    weights missing or left over (another backbone or head).
    """
    checkpointer = SafeDetectionCheckpointer(model, save_dir)
    if not checkpointer.has_checkpoint():
        return None
    path = checkpointer.get_checkpoint_file()
    if not path.endswith(".pth") or not os.path.isfile(path):
        return None  # not one this plugin's trainer wrote: detectron2's load reports on it
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True).get("model", {})
    except Exception as e:  # refused, truncated: the load that follows says so clearly
        raise SafeDetectionCheckpointer._unreadable(path, e) from None
    own = model.state_dict()
    shapes = [(k, tuple(saved[k].shape), tuple(v.shape)) for k, v in own.items() if k in saved and tuple(saved[k].shape) != tuple(v.shape)]
    missing = [k for k in own if k not in saved]
    extra = [k for k in saved if k not in own]
    problems = []
    if shapes:
        key, in_file, in_model = shapes[0]
        problems.append(f"{len(shapes)} weights of other shapes (e.g. {key}: {in_file} in the checkpoint, {in_model} in this model)")
    if missing:
        problems.append(f"{len(missing)} weights this model has and the checkpoint lacks (e.g. {missing[0]})")
    if extra:
        problems.append(f"{len(extra)} weights of the checkpoint this model lacks (e.g. {extra[0]})")
    return f"{path}: " + "; ".join(problems) if problems else None


def _write_atomically(path, write):
    """Call write(file) on a temporary file beside `path`, then rename it to `path`."""
    partial = f"{path}.partial"
    try:
        with open(partial, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)  # atomic: readers see the old file or the new one
    finally:
        if os.path.exists(partial):
            os.remove(partial)
