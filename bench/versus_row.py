"""One row of an ``ekd-table`` comparison against every other row of the same student and column.

    python bench/versus_row.py docs/results/synthetic_study.csv ekd                  # Avg and every TPR
    python bench/versus_row.py docs/results/synthetic_study.csv ekd --columns Avg "SynthIJB@1e-4"

``ekd-table`` tests each row against no-KD only. How the headline method compares with the best
baseline needs the other direction: this reads the table's ``comparison.csv`` (its ``n``, ``mean`` and
``std`` per method x column), runs Welch's two-sided test of ``METHOD`` minus each other row (with >= 2
runs: the teacher's single run is left out) per column, and Holm-adjusts over all of these tests.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from perf_common import markdown_table, welch_between_rows

from ekd.report.table import holm


def read_rows(table: Path) -> list[dict[str, str]]:
    with open(table, newline="") as handle:
        return list(csv.DictReader(handle))


def versus(rows: list[dict[str, str]], method: str, columns: list[str]) -> list[list[str]]:
    """Cells of the report: per column and other row, both means ± std, METHOD minus the other row
    with its 95 % interval, Welch's p and p Holm-adjusted over every test made here."""
    by_key = {(r["student"], r["method"], r["column"]): r for r in rows}
    tests = []
    for (student, other, column), row in by_key.items():
        mine = by_key.get((student, method, column))
        if other == method or column not in columns or mine is None:
            continue
        test = welch_between_rows(mine, row)
        if test is not None:
            tests.append((column, mine, row, test))
    if not tests:
        raise ValueError(f"no row to test {method!r} against in the columns {', '.join(columns)}")
    adjusted = holm([test.p_value for *_, test in tests])
    cells = []
    for (column, mine, row, test), p_holm in sorted(
        zip(tests, adjusted), key=lambda t: (t[0][0], -t[0][3].delta)
    ):
        cells.append(
            [
                column,
                row["label"],
                f"{float(row['mean']):.2f} ± {float(row['std']):.2f} ({row['n']})",
                f"{float(mine['mean']):.2f} ± {float(mine['std']):.2f} ({mine['n']})",
                f"{test.delta:+.2f} ± {test.ci95:.2f}",
                f"{test.p_value:.3g}",
                f"{p_holm:.3g}",
            ]
        )
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("table", type=Path, help="a comparison.csv written by ekd-table")
    parser.add_argument("method", help="the row's method key (the CSV's method column), e.g. ekd")
    parser.add_argument("--columns", nargs="+", help="columns to test (default: Avg and every TPR column)")
    args = parser.parse_args()
    rows = read_rows(args.table)
    if not any(r["method"] == args.method for r in rows):
        known = ", ".join(sorted({r["method"] for r in rows}))
        sys.exit(f"versus_row: {args.table} has no method {args.method!r} (it has: {known})")
    columns = args.columns or [c for c in dict.fromkeys(r["column"] for r in rows) if c == "Avg" or "@" in c]
    try:
        cells = versus(rows, args.method, columns)
    except ValueError as error:
        sys.exit(f"versus_row: {error}")
    print(f"{args.method} minus each other row; Welch, Holm over the {len(cells)} tests\n")
    header = [
        "column",
        "row",
        "row mean ± std (n)",
        f"{args.method} mean ± std (n)",
        "difference (95 % CI)",
        "p",
        "p_holm",
    ]
    print(markdown_table(header, cells))


if __name__ == "__main__":
    main()
