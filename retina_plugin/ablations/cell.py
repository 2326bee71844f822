"""
A cell of a grid: one training run's label and config overrides, and the output directory
named after them (its seed included; the keys' names shortened where the name would be too
long for the file system), so the same overrides always find the same run.
"""
import hashlib
import re
from dataclasses import dataclass, replace
from typing import List, Optional, Tuple

RETINANET = "MODEL.RETINANET."
# Most file systems cap one path component at 255 bytes.
MAX_DIRECTORY_NAME = 255


# How a directory name too long for the file system names the keys (the rest stay whole).
_SHORT_KEY_NAMES = {
    "datasets_test": "test", "datasets_train": "train", "cls_loss_type": "loss",
    "focal_loss_alpha": "alpha", "focal_loss_gamma": "gamma", "loss_normalizer": "normalizer",
    "num_classes": "classes", "sampling_free_prior_from_data": "sf_prior",
    "sampling_free_adaptive_score_thresh": "sf_thresh", "solver_clip_gradients_enabled": "clip",
}


def _directory_name(parts) -> str:
    return re.sub(r"[^A-Za-z0-9_.=,-]", "", "__".join(f"{name}={value}" for name, value in parts))


@dataclass(frozen=True)
class Cell:
    """One training run of a grid: its label, its config overrides, the paper's AP for it."""

    label: str
    overrides: Tuple[Tuple[str, object], ...]
    paper_ap: Optional[float] = None
    params: Tuple[Tuple[str, float], ...] = ()  # what the plots put on their axes
    # At most this many seeds of the runner's --seeds (None: all of them).
    max_seeds: Optional[int] = None

    @property
    def key(self) -> str:
        """A directory name that says what the cell runs: the same overrides, the same name."""
        parts = [(name.replace(RETINANET, "").lower().replace(".", "_"), value)
                 for name, value in sorted(self.overrides)]
        key = _directory_name(parts)
        if len(key) <= MAX_DIRECTORY_NAME:
            return key
        # Too long for one directory name (a sweep's Sampling-Free cell names its data set and
        # three Sampling-Free keys): the keys' names shortened, the values whole, and the full
        # name's hash, so that two cells never share a directory. Names that fit never change.
        short = _directory_name([(_SHORT_KEY_NAMES.get(name, name), value) for name, value in parts])
        digest = hashlib.sha1(key.encode()).hexdigest()[:10]
        return f"{short[:MAX_DIRECTORY_NAME - len(digest) - 2]}__{digest}"

    def with_seed(self, seed: int) -> "Cell":
        """The same cell trained with SEED `seed` (its own directory)."""
        return replace(self, overrides=self.overrides + (("SEED", int(seed)),))

    def seeded(self, seeds: Optional[int]) -> List["Cell"]:
        """Its runs for the runner's --seeds (None: one run, with the config's SEED)."""
        if seeds is None:
            return [self]
        count = seeds if self.max_seeds is None else min(seeds, self.max_seeds)
        return [self.with_seed(seed) for seed in range(count)]

    def opts(self) -> List[str]:
        """The overrides as train_net.py's trailing KEY VALUE arguments."""
        return [str(x) for name, value in self.overrides for x in (name, value)]


@dataclass(frozen=True)
class Grid:
    title: str
    cells: Tuple[Cell, ...]
    plot: Optional[Tuple[str, str]] = None  # (x param, the param that tells series apart)
    note: str = ""
    # "sweep": cells differ in their data ("dataset" param); plotted as AP(FL) - AP(balanced
    # CE) against the imbalance R that training measured. "schedule": cells differ in their
    # "iterations" param; reported with the AP each gains at twice the iterations.
    kind: str = "table"
    # A grid of losses crossed with a factor (its cells' "loss" param and the `factor` param):
    # reported seed by seed, each loss against `reference` and the factor's effect on each.
    reference: str = ""
    factor: str = ""
    # The iterations its runs train for (the config's, where no cell overrides them): a sweep's
    # report then says what a schedule check of them found at its data sets (regimes.py).
    iterations: Optional[int] = None
