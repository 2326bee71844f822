"""
The paper's ablations and the imbalance sweep: named grids (grids.py) of cells, each a run's
config overrides and the directory named after them (cell.py), run through train_net.py, one
process per cell and seed (runner.py, its progress line in progress.py), each run's outcome a
Result (result.py) read back from its directory (run_dir.py), and reported as a markdown table
and a CSV beside the paper's numbers (report.py), PNG plots (plots.py) and the sweep's table
and plot against R (sweep_report.py); a cell's seeds in seeds.py, seed-by-seed comparisons in
paired.py. The command line is tools/run_ablations.py.
"""
from .cell import Cell, Grid
from .grids import GRIDS, METRICS, PAPER_SOURCE, SWEEP_DATA, focal
from .plots import plot_series
from .progress import Progress
from .report import write_reports
from .result import Result, format_ap
from .run_dir import finished_result, read_metrics
from .runner import grid_runs, run_cell, run_grids
from .sweep_report import sweep_points

__all__ = [
    "GRIDS", "METRICS", "PAPER_SOURCE", "SWEEP_DATA", "Cell", "Grid", "focal",
    "format_ap", "plot_series", "sweep_points", "write_reports",
    "Progress", "Result", "finished_result", "grid_runs", "read_metrics", "run_cell", "run_grids",
]
