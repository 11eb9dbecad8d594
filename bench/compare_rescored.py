"""The same trained students scored on two designs of verification sets: what did the sets change?

    python bench/compare_rescored.py BEFORE_OUT AFTER_OUT     # two study folders (ekd-demo --study --out)

Training in ekd is deterministic on the CPU: the same config, seed and training images give the same
weights to the bit. Two studies that differ only in their verification sets therefore hold the same
networks, and comparing them run by run (a paired comparison) isolates the sets. For every run that
both folders hold (same method, student and seed) whose ``backbone.pth`` is byte-identical, this
prints AFTER minus BEFORE in each pair set's accuracy and in the average (points), per row the mean
and std of those differences over its seeds, and the row's seed-to-seed std of the average on each
side. A run whose weights differ is an error naming it: its difference would mix training and sets.
Runs in only one folder are listed and left out.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from perf_common import markdown_table

from ekd.models import file_sha256
from ekd.report import collect_results
from ekd.report.results import RunResults
from ekd.runs import BACKBONE_FILE


class DifferentWeightsError(ValueError):
    """A run present in both studies was trained differently (its backbone files differ)."""


@dataclass
class PairedRun:
    """One run scored on both designs: accuracies in percent, per set and averaged."""

    label: str
    order: float
    seed: int
    before: dict[str, float]
    after: dict[str, float]


def _accuracies(result: RunResults) -> dict[str, float]:
    """Percent accuracy of every pair set that has one, plus ``Avg`` (the run's mean accuracy)."""
    found = {
        name: 100.0 * metrics["accuracy"]
        for name, metrics in result.metrics.items()
        if isinstance(metrics, dict) and metrics.get("accuracy") is not None
    }
    if result.mean_accuracy is not None:
        found["Avg"] = 100.0 * result.mean_accuracy
    return found


def _by_run(folder: Path) -> dict[tuple[str, str, int], RunResults]:
    runs = {}
    for result in collect_results([folder]):
        if result.status == "finished":
            runs[(result.method, result.student, result.seed)] = result
    return runs


def _backbone(result: RunResults) -> Path:
    return Path(result.path).parent / BACKBONE_FILE


def paired_runs(before: Path, after: Path) -> tuple[list[PairedRun], list[str]]:
    """The runs both study folders hold with the same weights, and (per method and student) the seeds
    found in only one of them."""
    first, second = _by_run(before), _by_run(after)
    paired = []
    for key in sorted(first.keys() & second.keys()):
        a, b = first[key], second[key]
        if file_sha256(_backbone(a)) != file_sha256(_backbone(b)):
            raise DifferentWeightsError(
                f"{_backbone(a)} and {_backbone(b)} differ: method {key[0]}, student {key[1]}, seed "
                f"{key[2]} was trained differently in the two studies, so its scores cannot isolate the sets"
            )
        paired.append(PairedRun(a.label or a.method, a.order, a.seed, _accuracies(a), _accuracies(b)))
    seeds: dict[str, list[int]] = {}
    for method, student, seed in sorted(first.keys() ^ second.keys()):
        seeds.setdefault(f"{method} ({student})", []).append(seed)
    alone = [f"{row} seeds {', '.join(map(str, found))}" for row, found in seeds.items()]
    return paired, alone


def _mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:+.2f}" if values else ""
    return f"{statistics.fmean(values):+.2f} ± {statistics.stdev(values):.2f}"


def _std(values: list[float]) -> str:
    return f"{statistics.stdev(values):.2f}" if len(values) >= 2 else ""


def report(paired: list[PairedRun]) -> str:
    """Markdown: per row, the mean ± std over seeds of AFTER minus BEFORE for every column both sides
    score, and the row's seed-to-seed std of the average on each side; last, the same over all runs."""
    # the sets in the order the runs recorded them, the average last
    columns = [c for c in dict.fromkeys(c for r in paired for c in r.before if c in r.after) if c != "Avg"]
    columns.append("Avg")
    rows: dict[str, list[PairedRun]] = {}
    for run in sorted(paired, key=lambda r: (r.order, r.label, r.seed)):
        rows.setdefault(run.label, []).append(run)
    lines = []
    groups = [*rows.items(), ("all runs", paired)]
    for label, runs in groups:
        cells = [label, str(len(runs))]
        for column in columns:
            cells.append(_mean_std([r.after[column] - r.before[column] for r in runs if column in r.after]))
        if label != "all runs":
            cells += [_std([r.before["Avg"] for r in runs]), _std([r.after["Avg"] for r in runs])]
        else:
            cells += ["", ""]
        lines.append(cells)
    header = ["row", "runs", *(f"Δ {c}" for c in columns), "Avg std before", "Avg std after"]
    return markdown_table(header, lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("before", type=Path, help="the study scored on the former sets")
    parser.add_argument("after", type=Path, help="the same study scored on the new sets")
    args = parser.parse_args()
    try:
        paired, alone = paired_runs(args.before, args.after)
    except DifferentWeightsError as error:
        sys.exit(f"compare_rescored: {error}")
    if not paired:
        sys.exit(f"compare_rescored: {args.before} and {args.after} hold no run in common")
    print(f"{len(paired)} runs with byte-identical weights in both studies; after minus before, points\n")
    print(report(paired))
    if alone:
        print(f"\nin only one of the studies (left out): {'; '.join(alone)}")


if __name__ == "__main__":
    main()
