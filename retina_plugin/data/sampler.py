"""
Training data that a resumed run continues where the interrupted run stopped.

detectron2's TrainingSampler draws an endless, seeded stream of indices, but a resumed run
starts that stream again from its beginning: the iterations after a resume see the first
batches again, not the ones an uninterrupted run would have seen. ResumableTrainingSampler is
the same stream (the same seed gives the same indices) started `start` indices in, which
train_net.py sets from the iteration it resumes at. With images of one aspect ratio (batches
then take the stream in order) and DATALOADER.NUM_WORKERS 0 (the augmentation draws from the
global random state, which the checkpoint keeps: checkpoint.RandomStates), a resumed run trains
on exactly the batches of an uninterrupted one.
"""
import itertools

from detectron2.data.build import _train_loader_from_config, build_detection_train_loader
from detectron2.data.samplers import TrainingSampler


class ResumableTrainingSampler(TrainingSampler):
    """TrainingSampler whose stream (this process's share of it) starts `start` indices in."""

    def __init__(self, size, shuffle=True, seed=None):
        super().__init__(size, shuffle=shuffle, seed=seed)
        self.start = 0

    def __iter__(self):
        yield from itertools.islice(super().__iter__(), self.start, None)


def build_resumable_train_loader(cfg, mapper):
    """build_detection_train_loader(cfg, mapper=mapper), its TrainingSampler made resumable
    (the same seed, so the same stream). The loader's `resumable_sampler` is that sampler, or
    None for another DATALOADER.SAMPLER_TRAIN (which then restarts its stream on resume)."""
    arguments = _train_loader_from_config(cfg, mapper=mapper)
    sampler = arguments["sampler"]
    resumable = None
    if type(sampler) is TrainingSampler:
        resumable = ResumableTrainingSampler(sampler._size, shuffle=sampler._shuffle, seed=sampler._seed)
        arguments["sampler"] = resumable
    loader = build_detection_train_loader(**arguments)
    loader.resumable_sampler = resumable
    return loader


def instantiate_resumable_train_loader(loader_cfg):
    """A LazyConfig's dataloader.train instantiated, its TrainingSampler made resumable as
    build_resumable_train_loader's: where it calls detectron2's build_detection_train_loader
    with a data set list and no sampler of its own. Otherwise instantiated as it is (its
    `resumable_sampler` None)."""
    from detectron2.config import instantiate
    from detectron2.utils.registry import locate

    target = loader_cfg.get("_target_")
    target = locate(target) if isinstance(target, str) else target
    if target is not build_detection_train_loader or loader_cfg.get("sampler") is not None:
        loader = instantiate(loader_cfg)
        loader.resumable_sampler = None
        return loader
    arguments = {key: instantiate(loader_cfg[key]) for key in loader_cfg if key != "_target_"}
    resumable = None
    if isinstance(arguments.get("dataset"), list):
        resumable = ResumableTrainingSampler(len(arguments["dataset"]))  # as detectron2 would, seeded alike
        arguments["sampler"] = resumable
    loader = build_detection_train_loader(**arguments)
    loader.resumable_sampler = resumable
    return loader
