"""Results files of training runs and the comparison table built from them.

``results.json`` (:mod:`ekd.report.results`) is what ``ekd-train`` leaves in every run directory;
:mod:`ekd.report.table` aggregates many of them into the methods x benchmarks table, next to the
EKD paper's numbers (``paper_tables.csv``, package data).
"""

from ekd.report.results import (
    FORMAT,
    RESULTS_FILE,
    FinishedRunError,
    ResultsError,
    RunResults,
    collect_results,
    error_record,
    find_results,
    git_commit,
    library_versions,
    load_results,
    machine_record,
    write_results,
)
from ekd.report.table import (
    ComparisonTable,
    FailedRun,
    Row,
    Stat,
    build_tables,
    load_paper_table,
    log_to_wandb,
    plot_bars,
    save_tables,
    to_csv,
    to_latex,
    to_markdown,
    to_wandb_table,
)

__all__ = [
    "FORMAT",
    "RESULTS_FILE",
    "ComparisonTable",
    "FailedRun",
    "FinishedRunError",
    "ResultsError",
    "RunResults",
    "Row",
    "Stat",
    "build_tables",
    "collect_results",
    "error_record",
    "find_results",
    "git_commit",
    "library_versions",
    "machine_record",
    "load_paper_table",
    "load_results",
    "log_to_wandb",
    "plot_bars",
    "save_tables",
    "to_csv",
    "to_latex",
    "to_markdown",
    "to_wandb_table",
    "write_results",
]
