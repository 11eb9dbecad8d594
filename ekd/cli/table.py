"""``ekd-table``: the comparison table of one or many sweeps' ``results.json`` files.

    ekd-table multirun/2025-01-01/12-00-00-1a2b3c4d [more dirs or results files] [--out DIR]
              [--metric accuracy|tpr@1e-4|auc|eer] [--formats md,csv,tex,png] [--wandb]

Prints the Markdown table and writes ``comparison.{md,csv,tex,png}`` into ``--out`` (default: the
first directory given). ``--wandb`` logs it as a ``wandb.Table`` to the active run or to a new run
(offline unless WANDB_MODE says otherwise). The logic lives in :mod:`ekd.report`.

Per row and column: n, mean, std and 95 % confidence interval over the runs (seeds), the difference to
the no-KD row of the same student with Welch's t-test and its Holm-adjusted p-value over the table's
tests (marks ``*`` / ``**`` / ``***`` for p_Holm < 0.05 / 0.01 / 0.001 in Markdown and LaTeX, the
intervals as error bars in the PNG), and per row the cost (fit time, training images/s, peak memory).
Runs scored under another eval protocol or precision, on data of another generator version, or
distilled from another teacher are never averaged together: they go into separate tables, each titled
by what sets it apart (:mod:`ekd.report.table` has the definitions).
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path

from ekd.report import ResultsError, build_tables, collect_results, log_to_wandb, save_tables, to_markdown
from ekd.report.table import FORMATS
from ekd.report.wandb_runs import finish_wandb_run

EPILOG = textwrap.dedent(
    """\
    examples:
      ekd-table multirun/2025-01-01/12-00-00-1a2b3c4d
      ekd-table multirun/sweep-a multirun/sweep-b --out tables/ --metric tpr@1e-4
      ekd-table runs/*/results.json --formats md,csv --wandb
    """
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ekd-table",
        description=(
            "Aggregate results.json files into the methods x benchmarks table: mean, std, 95 % CI, the "
            "difference to no-KD with Welch's t-test and Holm-adjusted p-values, and each row's cost. "
            "Runs with another eval protocol, precision, data generator version or teacher go into "
            "separate tables."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "paths", nargs="+", help="sweep / run directories (searched recursively) or results files"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="output directory (default: the first path given)"
    )
    parser.add_argument("--stem", default="comparison", help="file name stem of the outputs")
    parser.add_argument(
        "--metric", default="accuracy", help="accuracy (default), tpr@<fpr> e.g. tpr@1e-4, auc or eer"
    )
    parser.add_argument(
        "--formats", default=",".join(FORMATS), help=f"comma-separated subset of {','.join(FORMATS)}"
    )
    parser.add_argument("--wandb", action="store_true", help="log the table to W&B (offline by default)")
    parser.add_argument("--wandb-project", default="ekd", help="project of the W&B run created by --wandb")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        results = collect_results(args.paths)
        tables = build_tables(results, metric=args.metric)
    except ResultsError as error:
        print(f"ekd-table: {error}", file=sys.stderr)
        return 2
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    out = args.out
    if out is None:
        first = Path(args.paths[0])
        out = first if first.is_dir() else first.parent
    try:
        paths = save_tables(tables, out, stem=args.stem, formats=formats)
    except ValueError as error:
        print(f"ekd-table: {error}", file=sys.stderr)
        return 2
    print(to_markdown(tables))
    for fmt, path in paths.items():
        print(f"wrote {fmt}: {path}")
    if args.wandb:
        import wandb

        os.environ.setdefault("WANDB_MODE", "offline")
        own_run = wandb.run is None
        if own_run:
            wandb.init(project=args.wandb_project, job_type="table", dir=str(out), name=f"table-{args.stem}")
        log_to_wandb(tables)
        if own_run:
            finish_wandb_run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
