"""What does the teacher embedding cache save in the study? Whole ``ekd-train`` student runs of the
study, the same method and seed with the online teacher and with ``distill.teacher_cache``, side by side
(one thread each, so both see the same machine), plus the one-off cost of building the cache.

    python bench/bench_teacher_cache.py --study-out study_out            # kd and ekd, seed 100
    python bench/bench_teacher_cache.py --study-out study_out --methods rkd --seed 7
    python bench/bench_teacher_cache.py --quick                          # a smoke test (own tiny teacher)
    python bench/bench_teacher_cache.py --compare online.csv cached.csv  # two studies, row by row

``--study-out`` is the folder of an ``ekd-demo --study`` run: its ``teacher/`` is the teacher (its
benchmark is generated under ``$EKD_DATA_DIR`` if missing). The figures are the runs' own records
(``results.json``): ``fit_time_s`` (training only) and ``wall_time_s`` (the whole run, evaluation
included), and the average accuracy as a check that both runs learned alike (same seed; the cache
stores float16 embeddings, so they are close, not equal).

One pair of runs cannot tell whether the cache changes what a row learns (the seed spread is larger
than any such change). ``--compare`` can: it takes the ``comparison.csv`` of ``ekd-table`` for a study
with the online teacher and one with the cache (same seeds) and tests every row x column with Welch's
test from the tables' n / mean / std, Holm-adjusted over all of them.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

from perf_common import record, run_side_by_side, student_command, time_cells, welch_between_rows

from ekd.cli.demo import QUICK_OVERRIDES, STUDENTS, compose_run_config, ensure_teacher_cache


def compare_studies(online_csv: Path, cached_csv: Path) -> None:
    """Print, for every row x column that both tables hold with >= 2 runs, the cached-minus-online
    difference, its 95 % interval and Welch's p, Holm-adjusted over all of them."""
    from ekd.report.table import holm

    def rows(path: Path) -> dict[tuple[str, str], dict[str, str]]:
        with open(path, newline="") as handle:
            return {(r["method"], r["column"]): r for r in csv.DictReader(handle)}

    online, cached = rows(online_csv), rows(cached_csv)
    tests = []
    for key in (k for k in online if k in cached):
        a, b = cached[key], online[key]
        test = welch_between_rows(a, b)  # None for a single run on a side (the teacher)
        if test is not None:
            tests.append((key, a, b, test))
    adjusted = holm([t.p_value for *_, t in tests])
    print(f"{len(tests)} tests (row x column; cached minus online; Welch, Holm over all of them)\n")
    print("| row | column | n online / cached | online | cached | difference (95 % CI) | p | p_holm |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for ((_, column), a, b, test), p_holm in zip(tests, adjusted):
        spread = [f"{float(r['mean']):.2f} ± {float(r['std']):.2f}" for r in (b, a)]
        print(
            f"| {a['label']} | {column} | {b['n']} / {a['n']} | {spread[0]} | {spread[1]} "
            f"| {test.delta:+.2f} ± {test.ci95:.2f} | {test.p_value:.3g} | {p_holm:.3g} |"
        )
    print(f"\nsmallest p {min(t.p_value for *_, t in tests):.3g}, smallest p_holm {min(adjusted):.3g}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--study-out", type=Path, default=None, help="an ekd-demo --study folder (its teacher)"
    )
    parser.add_argument("--methods", default="kd,ekd", help="comma-separated rows to time (default kd,ekd)")
    parser.add_argument("--seed", type=int, default=100, help="the students' seed (default 100)")
    parser.add_argument(
        "--quick", action="store_true", help="the demo's tiny quick runs and teacher (smoke test)"
    )
    parser.add_argument(
        "--compare",
        nargs=2,
        type=Path,
        metavar=("ONLINE_CSV", "CACHED_CSV"),
        help="test two studies' comparison.csv files row by row instead of timing runs",
    )
    args = parser.parse_args(argv)
    if args.compare:
        compare_studies(*args.compare)
        return 0
    if args.quick == (args.study_out is not None):
        parser.error("give exactly one of --study-out, --quick and --compare")
    experiment = "synthetic/student" if args.quick else "synthetic/study_student"
    common = ["logger=csv", "callbacks.verification=null", f"student={STUDENTS['mobilefacenet']}"]
    common += list(QUICK_OVERRIDES) if args.quick else []
    with tempfile.TemporaryDirectory(prefix="ekd-bench-cache-") as tmp_name:
        tmp = Path(tmp_name)
        if args.quick:
            teacher_dir = tmp / "teacher"
            run_side_by_side([["ekd-train", "experiment=synthetic/teacher", *common[:2], *QUICK_OVERRIDES,
                               f"hydra.run.dir={teacher_dir}"]])  # fmt: skip
        else:
            teacher_dir = args.study_out / "teacher"
        checkpoint = teacher_dir / "checkpoints" / "last.ckpt"
        if not checkpoint.is_file():
            raise SystemExit(f"{checkpoint}: no teacher checkpoint (expected an ekd-demo --study folder)")

        from ekd.run import build_datamodule

        data = build_datamodule(compose_run_config(experiment, common))
        started = time.perf_counter()
        cache = ensure_teacher_cache(str(checkpoint), Path(data.root), data.fingerprint(), tmp / "cache")
        build_s = time.perf_counter() - started
        print(f"cache build: {build_s:.1f} s for {len(data.dataset)} images + flips ({os.cpu_count()} CPUs)")
        print()
        print("| row | online teacher: fit / whole run (s) | cache: fit / whole run (s) | fit ratio "
              "| run ratio | avg acc online / cache (%) |")  # fmt: skip
        print("|---|---:|---:|---:|---:|---:|")
        for method in args.methods.split(","):
            overrides = [
                *common,
                f"distill={method}",
                f"seed={args.seed}",
                f"teacher.checkpoint={checkpoint}",
            ]
            online, cached = tmp / f"{method}-online", tmp / f"{method}-cache"
            run_side_by_side([
                student_command(experiment, overrides, online),
                student_command(experiment, [*overrides, f"distill.teacher_cache={cache}"], cached),
            ])  # fmt: skip
            a, b = record(online), record(cached)
            if not b["used"]:
                print(f"| {method} | the cache was not used by this row (it reads stage feature maps) |||||")
                continue
            print(f"| {method} | {time_cells(a, b)} | {a['avg']:.2f} / {b['avg']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
