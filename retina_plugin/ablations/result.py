"""
The outcome of one run of a grid (Result), as the runner writes it to result.json and the
reports read it, and its AP as the reports and the progress lines print it.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from .grids import METRICS


@dataclass
class Result:
    status: str  # "ok", "diverged" or "failed"
    metrics: Dict[str, float] = field(default_factory=dict)
    iteration: Optional[int] = None  # where a diverged run stopped
    log: str = ""
    note: str = ""
    # [(iteration, AP)] of the periodic evaluations, the last one included.
    curve: List[Tuple[int, float]] = field(default_factory=list)
    # The median over iterations of R (negative pairs per positive pair) training logged.
    neg_pairs_per_pos: Optional[float] = None
    seconds: Optional[float] = None  # wall time of the run that finished the cell
    reused_from: Optional[str] = None  # the finished run of the same config this one is
    # The median over iterations of the background anchors' share of the classification loss
    # (cls_loss_background_share): whether the many easy negatives dominate the loss, the
    # paper's case against CE.
    background_share: Optional[float] = None
    # The SHA-256 (16 hex digits) of the pretrained backbone the run started from, if any.
    backbone_sha256: Optional[str] = None
    # '<run>, iterations 0-k': the run of another schedule whose checkpoint this one started from
    # (prefix.py: up to k both had the same config and learning rate, so the same iterations).
    shared_prefix_from: Optional[str] = None
    # The machines that trained it (retina_plugin.machine), in order: a run resumed on another
    # machine is computed by both.
    machines: List[str] = field(default_factory=list)
    # The final weights evaluated again with float64 class scores (MODEL.RETINANET.SCORE_DTYPE_TEST):
    # float32 rounds a confident classifier's best scores to a tie at 1 (runner.FLOAT64_SCORES_DIR).
    metrics_float64: Dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        self.curve = [tuple(point) for point in self.curve]
        values = [self.metrics.get(m, float("nan")) for m in METRICS]
        if self.status == "ok" and all(v != v for v in values):
            # COCOEvaluator reports NaN for everything when a model detects nothing; against
            # ground truth that is an AP of 0 (the paper's 0.0 for CE at alpha 0.1).
            self.metrics = {m: (float("nan") if m == "APl" else 0.0) for m in METRICS}
            self.note = "no detections"

    def describe(self) -> str:
        if self.status == "diverged":
            return f"diverged at iteration {self.iteration}"
        if self.status == "failed":
            return f"failed (see {self.log})"
        return "ok"


def curve_ap(ap: float) -> float:
    """A periodic evaluation's AP as the curves average it: COCOEvaluator's NaN means the model
    detected nothing, an AP of 0 (as Result does for the final metrics)."""
    return 0.0 if ap != ap else ap


def outcome(result: Result) -> str:
    """What a progress line says of a finished run: 'ok 83.5', or why it has no AP."""
    if result.status == "ok":
        return f"ok {format_ap(result)}"
    return result.describe()


def format_ap(result: Optional[Result], metric="AP") -> str:
    if result is None:
        return "not run"
    if result.status != "ok":
        return result.describe()
    value = result.metrics.get(metric, float("nan"))
    text = "-" if value != value else f"{value:.1f}"
    return f"{text} ({result.note})" if result.note and metric == "AP" else text
