"""
The paper's ablations, and the imbalance sweep, as named grids of cells (cell.py): config
overrides that train_net.py runs (runner.py) and report.py reports beside the paper's numbers.
A cell shared by two grids (FL with gamma 2, alpha 0.25 is in Table 1b and 1d) has one
directory, so it trains once.
"""
from dataclasses import replace
from typing import Dict

from .cell import RETINANET, Cell, Grid

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# Table 1 of the paper: R-50-FPN (R-101 in 1d) trained and tested at 600 px on COCO minival.
PAPER_SOURCE = "the paper's Table 1 (COCO minival, R-50-FPN at 600 px; R-101 in Table 1d)"


def focal(alpha, gamma, label=None, paper_ap=None, **more):
    alpha, gamma = float(alpha), float(gamma)  # yacs refuses an int for a float key
    overrides = {
        RETINANET + "CLS_LOSS_TYPE": "focal",
        RETINANET + "FOCAL_LOSS_ALPHA": alpha,
        RETINANET + "FOCAL_LOSS_GAMMA": gamma,
        RETINANET + "PRIOR_PROB": 0.01,
        **{RETINANET + k: v for k, v in more.items()},
    }
    name = "CE" if gamma == 0 else "FL"
    label = label or f"{name} gamma {gamma:g}, alpha {alpha:g}"
    return Cell(label, tuple(overrides.items()), paper_ap, (("gamma", gamma), ("alpha", alpha)))


def focal_cells(rows):
    """Cells of the focal loss from (gamma, alpha, the paper's AP) rows."""
    return tuple(focal(alpha, gamma, paper_ap=ap) for gamma, alpha, ap in rows)


def ohem(label, paper_ap, positive_fraction):
    """The paper's OHEM cells: batch 128 per image after NMS at 0.5."""
    return _loss(
        "ohem", label, paper_ap,
        **{"OHEM.BATCH_SIZE_PER_IMAGE": 128, "OHEM.NMS_THRESH": 0.5,
           "OHEM.POSITIVE_FRACTION": positive_fraction},
    )


def _loss(loss_type, label, paper_ap=None, **keys):
    overrides = {RETINANET + "CLS_LOSS_TYPE": loss_type, RETINANET + "PRIOR_PROB": 0.01}
    overrides.update({RETINANET + k: v for k, v in keys.items()})
    return Cell(label, tuple(overrides.items()), paper_ap)


NO_CLIPPING = (("SOLVER.CLIP_GRADIENTS.ENABLED", False),)


def ghm_c(label, momentum=0.75, *more):
    """GHM-C with 30 bins (the paper's), `more` overrides beside the loss's."""
    cell = _loss("ghm_c", label, **{"GHM_C.BINS": 30, "GHM_C.MOMENTUM": momentum})
    return replace(cell, overrides=cell.overrides + more)


# Where the learning rate drops, as fractions of the run: the paper's (lr / 10 at 60k and 80k
# of its 90k iterations) and the later ones of our first schedules (2500 and 2800 of 3000).
PAPERS_STEPS = ((2, 3), (8, 9))
LATE_STEPS = ((5, 6), (14, 15))


def step_schedule(max_iter, steps=LATE_STEPS):
    """(SOLVER.MAX_ITER, SOLVER.STEPS) overrides: `max_iter` iterations, the learning rate
    divided by 10 at each fraction of `steps` (LATE_STEPS at 3000: 2500 and 2800; the
    paper's: 2000 and 2666)."""
    return (("SOLVER.MAX_ITER", int(max_iter)), ("SOLVER.STEPS", tuple(max_iter * a // b for a, b in steps)))


def steps_label(steps) -> str:
    return "steps at " + " and ".join(f"{a}/{b}" for a, b in steps) + (" (the paper's)" if steps == PAPERS_STEPS else "")


# configs/sparse.yaml's learning rate, iterations and steps: the ones the schedule grid
# measured; a test keeps them equal. SCHEDULE_CHECK: the iterations that grid trains for each
# placement of the steps, each beside twice it, longest first (they take longest; the table
# pairs them). Runs of one loss and seed share their iterations up to the first step that
# differs (prefix.py): the paper's steps at 6000 start from the late steps' 6000 at 3999.
PAPER_SETUP_LR = 0.02
PAPER_SETUP_ITERATIONS = 24000
PAPER_SETUP_STEPS = PAPERS_STEPS
# A schedule has converged when twice its iterations gain less than this much AP, on average
# over the seeds that finished both.
CONVERGED_GAIN = 1.5
SCHEDULE_CHECK = ((48000, PAPERS_STEPS), (24000, PAPERS_STEPS), (12000, LATE_STEPS), (12000, PAPERS_STEPS),
                  (6000, LATE_STEPS), (6000, PAPERS_STEPS), (3000, LATE_STEPS), (3000, PAPERS_STEPS))


# configs/sparse_scratch.yaml's schedule (3000 iterations, steps at 2500 and 2800) twice as long.
SPARSE_2X = step_schedule(6000)


def with_overrides(cell: Cell, label_suffix: str, *overrides, max_seeds=None, **params) -> Cell:
    """`cell` with more overrides (and plot params), its label extended; `max_seeds` caps its seeds."""
    return replace(
        cell,
        label=f"{cell.label}, {label_suffix}",
        overrides=cell.overrides + overrides,
        params=cell.params + tuple(params.items()),
        max_seeds=max_seeds if max_seeds is not None else cell.max_seeds,
    )


def clipping(cell: Cell, enabled: bool) -> Cell:
    """`cell` with gradient clipping (the quickstart's, per-parameter norm 5) on or off, explicitly."""
    suffix = "clipping at norm 5" if enabled else "no clipping"
    return with_overrides(cell, suffix, ("SOLVER.CLIP_GRADIENTS.ENABLED", enabled), clipping=float(enabled))


# The paper setup's schedule beside twice and four times it, the paper's steps: where twice it
# is not converged (schedule_three_losses), the next doubling says whether twice it is.
LONGER_SCHEDULES = tuple((factor * PAPER_SETUP_ITERATIONS, PAPERS_STEPS) for factor in (2, 1, 4))


def schedule_cells(losses, schedules) -> tuple:
    """Each loss without clipping at each (iterations, steps) of `schedules`, at the paper
    setup's learning rate; every cell names them (its label, key and params)."""
    return tuple(
        with_overrides(
            clipping(cell, False), f"lr {PAPER_SETUP_LR:g}, {max_iter} iterations, {steps_label(steps)}",
            ("SOLVER.BASE_LR", PAPER_SETUP_LR), *step_schedule(max_iter, steps),
            lr=PAPER_SETUP_LR, iterations=max_iter, first_step=steps[0][0] / steps[0][1],
        )
        for max_iter, steps in schedules
        for cell in losses
    )


def sampling_free(label="Sampling-Free CE", paper_ap=None):
    """CE with Sampling-Free's three mechanisms (configs/losses/sampling_free.yaml)."""
    return _loss(
        "focal", label, paper_ap,
        **{"FOCAL_LOSS_ALPHA": -1.0, "FOCAL_LOSS_GAMMA": 0.0, "LOSS_NORMALIZER": "guided",
           "SAMPLING_FREE.PRIOR_FROM_DATA": True, "SAMPLING_FREE.ADAPTIVE_SCORE_THRESH": True},
    )


HEADLINE_LOSSES = (
    focal(-1, 0, "CE"),
    focal(0.75, 0, "balanced CE, alpha 0.75", 31.1),
    focal(0.25, 2, "FL gamma 2, alpha 0.25", 34.0),
    sampling_free(),
)

# The imbalance sweep's data: built-in sets (retina_plugin/data/builtin.py) that differ only in
# objects per image and classes, all 160 px: (name, classes). R grows from about 4 x 10^2 to
# 5 x 10^4 (tools/measure_imbalance.py).
SWEEP_DATA = (
    ("retina_shapes", 6),
    ("retina_imbalance_k12", 12),
    ("retina_imbalance_k24", 24),
    ("retina_sparse", 48),
    ("retina_imbalance_k48_single", 48),
)


def on_data(cell: Cell, dataset: str, num_classes: int, loss: str, **cell_fields) -> Cell:
    """`cell` trained and evaluated on the built-in set `dataset` (its train and val splits);
    `loss` is its short name in the sweep's report."""
    data = (
        ("DATASETS.TRAIN", f"('{dataset}_train',)"),
        ("DATASETS.TEST", f"('{dataset}_val',)"),
        (RETINANET + "NUM_CLASSES", num_classes),
    )
    params = cell.params + (("dataset", dataset), ("loss", loss))
    return replace(cell, overrides=data + cell.overrides, params=params, **cell_fields)


def sweep_cells():
    """The paper's setup (configs/sparse.yaml): balanced CE, FL and Sampling-Free at each point."""
    losses = (
        ("balanced CE", focal(0.75, 0, "balanced CE, alpha 0.75")),
        ("FL", focal(0.25, 2, "FL gamma 2, alpha 0.25")),
        ("Sampling-Free", sampling_free()),
    )
    # Without clipping, said explicitly: the paper's setup, and a key of its own beside the
    # from-scratch sweep's cells (which trained with the config's clipping).
    cells = [
        on_data(replace(cell, overrides=cell.overrides + NO_CLIPPING), dataset, num_classes, loss)
        for dataset, num_classes in SWEEP_DATA
        for loss, cell in losses
    ]
    return tuple(replace(c, label=f"{dict(c.params)['dataset']}: {c.label}") for c in cells)


def sweep_cells_scratch():
    """The first sweep (configs/sparse_scratch.yaml): balanced CE, FL, CE with the standard init."""
    cells = []
    for dataset, num_classes in SWEEP_DATA:
        cells.append(on_data(focal(0.75, 0, "balanced CE, alpha 0.75"), dataset, num_classes, "balanced CE"))
        cells.append(on_data(focal(0.25, 2, "FL gamma 2, alpha 0.25"), dataset, num_classes, "FL"))
        # Standard initialisation, no clipping: where does it start to fail? One seed is enough.
        standard = focal(-1, 0, "CE, standard init", PRIOR_PROB=0.5)
        cells.append(
            on_data(replace(standard, overrides=standard.overrides + NO_CLIPPING), dataset, num_classes,
                    "CE, standard init", max_seeds=1)
        )
    return tuple(replace(c, label=f"{dict(c.params)['dataset']}: {c.label}") for c in cells)


GRIDS: Dict[str, Grid] = {
    "init": Grid(
        "Initialisation: CE with and without the prior on the class bias",
        tuple(
            # Without gradient clipping, as the paper: clipping would hide a divergence.
            Cell(c.label, c.overrides + NO_CLIPPING)
            for c in (
                focal(-1, 0, "CE, standard init (bias 0: pi = 0.5)", PRIOR_PROB=0.5),
                focal(-1, 0, "CE, prior init (pi = 0.01)"),
            )
        ),
        note="The paper: CE with the standard initialisation diverges; with pi = 0.01 it "
        "trains. Both cells without gradient clipping, as the paper.",
    ),
    "schedule": Grid(
        "The learning rate and the schedule: balanced CE and FL without clipping, each "
        "schedule beside twice it",
        schedule_cells(HEADLINE_LOSSES[1:3], SCHEDULE_CHECK),
        kind="schedule",
        note="Run with configs/sparse.yaml; every cell names its learning rate and schedule. "
        "A schedule has converged when twice the iterations (the learning-rate steps scaled "
        "with them) gain less than 1.5 AP on average over the seeds. Why lr 0.02 and not the "
        "paper's 0.005 per image: docs/ablations/schedule_first_backbone/.",
    ),
    "schedule_three_losses": Grid(
        "The schedule checked for the sweep's three losses: balanced CE, FL and Sampling-Free CE "
        "at the paper setup's iterations, twice and four times them",
        schedule_cells(HEADLINE_LOSSES[1:], LONGER_SCHEDULES),
        kind="schedule",
        note="Run with configs/sparse.yaml and a data set's overrides, where the schedule measured "
        "at retina_sparse need not hold (at retina_imbalance_k48_single it did not: "
        "docs/ablations/schedule_k48_single/). The losses compare where doubling the iterations "
        f"gains each of them under {CONVERGED_GAIN} AP; every cell names its learning rate and schedule, so its runs are the "
        "schedule grid's and the sweep's where those have them (--reuse-from).",
    ),
    "headline": Grid(
        "CE, balanced CE, FL and Sampling-Free, without and with gradient clipping",
        tuple(
            clipping(replace(cell, params=cell.params + (("loss", cell.label),)), enabled)
            for enabled in (False, True)
            for cell in HEADLINE_LOSSES
        ),
        reference="balanced CE, alpha 0.75",
        factor="clipping",
        note="Run with configs/sparse.yaml (the paper's setup: a pretrained backbone, lr 0.02 "
        "at batch 8 and the schedule the schedule grid measured). The paper: FL beats the best balanced CE by about "
        "3 AP (Table 1a/b). Sampling-Free (Chen et al. 2019) reports CE with its three "
        "mechanisms at 36.8 against FL's 36.4 (COCO, RetinaNet R-50 1x; its repository).",
    ),
    "headline_scratch": Grid(
        "CE, balanced CE and focal loss: the paper's main comparison",
        (
            focal(-1, 0, "CE"),
            focal(0.75, 0, "balanced CE, alpha 0.75", 31.1),
            focal(0.25, 2, "FL gamma 2, alpha 0.25", 34.0),
        ),
        note="The paper: FL beats the best balanced CE by about 3 AP (Table 1a/b).",
    ),
    "table1a": Grid(
        "Table 1a: balanced CE, alpha",
        focal_cells(
            (0, alpha, ap)
            for alpha, ap in (
                (0.10, 0.0), (0.25, 10.8), (0.50, 30.2), (0.75, 31.1),
                (0.90, 30.8), (0.99, 28.7), (0.999, 25.1),
            )
        ),
        plot=("alpha", "gamma"),
    ),
    "table1b": Grid(
        "Table 1b: focal loss, gamma and alpha",
        focal_cells(
            (
                (0, 0.75, 31.1), (0.1, 0.75, 31.4), (0.2, 0.75, 31.9), (0.5, 0.50, 32.9),
                (1, 0.25, 33.7), (2, 0.25, 34.0), (5, 0.25, 32.2),
            )
        ),
        plot=("gamma", "alpha"),
    ),
    "interaction": Grid(
        "gamma and alpha together: CE and FL (gamma 2) at three alphas",
        focal_cells(
            (
                (0, 0.25, 10.8), (0, 0.5, 30.2), (0, 0.75, 31.1),
                (2, 0.25, 34.0), (2, 0.5, None), (2, 0.75, None),
            )
        ),
        plot=("alpha", "gamma"),
        note="The paper: gamma and alpha interact; the best alpha is lower with a higher gamma "
        "(0.75 for CE, 0.25 for FL with gamma 2).",
    ),
    "table1d": Grid(
        "Table 1d: OHEM against focal loss",
        (
            ohem("OHEM, nms 0.5, batch 128", 32.8, -1.0),
            ohem("OHEM 1:3, nms 0.5, batch 128", 31.1, 0.25),
            focal(0.25, 2, "FL gamma 2, alpha 0.25", 36.0),
        ),
        note="The paper's Table 1d is R-101 (FL 36.0); its best OHEM is 32.8, OHEM 1:3 31.1.",
    ),
    "variants": Grid(
        "FL* (appendix A) and softmax focal loss against FL",
        (
            _loss("focal_star", "FL*, gamma 2, beta 1", 33.8,
                  **{"FOCAL_LOSS_ALPHA": 0.25, "FOCAL_STAR.GAMMA": 2.0, "FOCAL_STAR.BETA": 1.0}),
            _loss("focal_star", "FL*, gamma 4, beta 0", 33.9,
                  **{"FOCAL_LOSS_ALPHA": 0.25, "FOCAL_STAR.GAMMA": 4.0, "FOCAL_STAR.BETA": 0.0}),
            _loss("softmax_focal", "softmax FL, gamma 2, alpha 0.25", None,
                  **{"FOCAL_LOSS_ALPHA": 0.25, "FOCAL_LOSS_GAMMA": 2.0}),
            focal(0.25, 2, "FL gamma 2, alpha 0.25", 34.0),
        ),
        note="The paper reports FL* in its appendix A (33.8 and 33.9 AP against FL's 34.0) "
        "and no softmax-FL number.",
    ),
    "family": Grid(
        "The focal-loss family after the paper: FL, QFL, VFL, GHM-C and Poly-1",
        (
            focal(0.25, 2, "FL gamma 2, alpha 0.25", 34.0),
            _loss("quality_focal", "QFL (GFL), beta 2", **{"QUALITY_FOCAL.BETA": 2.0}),
            _loss("varifocal", "VFL (VarifocalNet), alpha 0.75, gamma 2",
                  **{"VARIFOCAL.ALPHA": 0.75, "VARIFOCAL.GAMMA": 2.0}),
            ghm_c("GHM-C, 30 bins, momentum 0.75"),
            _loss("poly1_focal", "Poly-1 FL, epsilon 1", **{"FOCAL_LOSS_ALPHA": 0.25, "FOCAL_LOSS_GAMMA": 2.0,
                                                            "POLY1.EPSILON": 1.0}),
        ),
        note="Each loss with its paper's default settings, all with the prior initialisation. "
        "References on COCO (not measured here; other detectors and schedules): RetinaNet "
        "R-50 1x, FL 36.5 against VFL 37.4 (VarifocalNet's authors' repository); GFL R-50 1x "
        "(ATSS, QFL with DFL) 40.2 (GFL's authors' repository); RetinaNet R-50 1x with GHM-C "
        "and GHM-R 37.0 (mmdetection); the PolyLoss paper's COCO detection result is Mask "
        "R-CNN with CE, 47.2 against Poly-1's 49.7 (its Table 1), no RetinaNet.",
    ),
    "ghm_c": Grid(
        "GHM-C: a longer schedule, one batch's density, a larger loss weight",
        (
            ghm_c("GHM-C, 30 bins, momentum 0.75"),
            ghm_c("GHM-C, 30 bins, momentum 0.75, 2x schedule", 0.75, *SPARSE_2X),
            # One seed: a check of the moving average, not a comparison of losses.
            replace(ghm_c("GHM-C, 30 bins, momentum 0 (one batch's density)", 0.0), max_seeds=1),
            ghm_c("GHM-C, 30 bins, momentum 0.75, loss weight 5", 0.75, (RETINANET + "CLS_LOSS_WEIGHT", 5.0)),
        ),
        note="Run with configs/sparse_scratch.yaml, where the family grid's GHM-C hardly learns to "
        "classify: does it learn in twice the iterations (6000, steps at 5000 and 5600), with "
        "the gradient density of each batch alone (no moving average), or with its loss 5 "
        "times larger (mmdetection sums GHM-C's mean over the 5 FPN levels)? The first cell "
        "is the family grid's (--reuse-from its output).",
    ),
    "imbalance": Grid(
        "The imbalance sweep: balanced CE, FL and Sampling-Free as the data grows more imbalanced",
        sweep_cells(),
        note="Only the data changes: objects per image and classes (retina_plugin/data/"
        "builtin.py), so R, the negative (anchor, class) pairs per positive pair, grows about "
        "100x. Run with configs/sparse.yaml (the paper's setup, no gradient clipping).",
        kind="sweep",
        iterations=PAPER_SETUP_ITERATIONS,
    ),
    "imbalance_scratch": Grid(
        "The imbalance sweep: balanced CE against FL as the data grows more imbalanced",
        sweep_cells_scratch(),
        note="Only the data changes: objects per image and classes (retina_plugin/data/"
        "builtin.py), so R, the negative (anchor, class) pairs per positive pair, grows about "
        "100x. The standard-initialisation CE cells (no clipping, one seed) show from which R "
        "it fails. Run with configs/sparse_scratch.yaml.",
        kind="sweep",
    ),
}
