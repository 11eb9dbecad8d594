"""What does ``channels_last=true`` (NHWC tensors) buy the study on a CPU? Whole ``ekd-train`` student
runs of the study, the same method and seed in the default layout and in channels_last, side by side
(one thread each, so both see the same machine).

    python bench/bench_channels_last.py --study-out study_out                  # no-KD, seed 0
    python bench/bench_channels_last.py --study-out study_out --methods none,kd
    python bench/bench_channels_last.py --quick                                # a smoke test (tiny runs)

``--study-out`` is the folder of an ``ekd-demo --study`` run: its ``teacher/`` is the teacher of the
distillation rows (its benchmark is generated under ``$EKD_DATA_DIR`` if missing). The figures are the
runs' own records (``results.json``): fit and whole-run seconds, training images/s, and the average
accuracy. The two layouts compute the same arithmetic in another order, so the rounding differs and a
seed's trajectory with it: the accuracies differ like two seeds, not like two methods.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from perf_common import record, run_side_by_side, student_command, time_cells

from ekd.cli.demo import QUICK_OVERRIDES, STUDENTS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study-out", type=Path, default=None, help="an ekd-demo --study folder")
    parser.add_argument("--methods", default="none", help="comma-separated rows to time (default none)")
    parser.add_argument("--seed", type=int, default=0, help="the students' seed (default 0)")
    parser.add_argument("--quick", action="store_true", help="the demo's tiny quick runs (smoke test)")
    args = parser.parse_args(argv)
    if args.quick == (args.study_out is not None):
        parser.error("give exactly one of --study-out and --quick")
    experiment = "synthetic/student" if args.quick else "synthetic/study_student"
    common = ["logger=csv", "callbacks.verification=null", f"student={STUDENTS['mobilefacenet']}"]
    common += list(QUICK_OVERRIDES) if args.quick else []
    methods = args.methods.split(",")
    checkpoint = None if args.quick else args.study_out / "teacher" / "checkpoints" / "last.ckpt"
    if checkpoint is not None and methods != ["none"] and not checkpoint.is_file():
        raise SystemExit(f"{checkpoint}: no teacher checkpoint (expected an ekd-demo --study folder)")
    if args.quick:
        methods = ["none"]  # no teacher in the smoke test
    print("| row | default: fit / whole run (s) | channels_last: fit / whole run (s) | fit ratio | run ratio "
          "| images/s default / channels_last | avg acc default / channels_last (%) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="ekd-bench-cl-") as tmp_name:
        tmp = Path(tmp_name)
        for method in methods:
            overrides = [*common, f"distill={method}", f"seed={args.seed}"]
            if method != "none":
                overrides.append(f"teacher.checkpoint={checkpoint}")
            plain, nhwc = tmp / f"{method}-default", tmp / f"{method}-channels-last"
            run_side_by_side([
                student_command(experiment, [*overrides, "channels_last=false"], plain),
                student_command(experiment, [*overrides, "channels_last=true"], nhwc),
            ])  # fmt: skip
            a, b = record(plain), record(nhwc)
            rates = f"{a['images_per_s']:.1f} / {b['images_per_s']:.1f}"
            accuracies = f"{a['avg']:.2f} / {b['avg']:.2f}"
            print(f"| {method} | {time_cells(a, b)} | {rates} | {accuracies} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
