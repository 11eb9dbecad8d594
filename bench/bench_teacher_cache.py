"""What does the teacher embedding cache save in the study? Whole ``ekd-train`` student runs of the
study, the same method and seed with the online teacher and with ``distill.teacher_cache``, side by side
(one thread each, so both see the same machine), plus the one-off cost of building the cache.

    python bench/bench_teacher_cache.py --study-out study_out            # kd and ekd, seed 100
    python bench/bench_teacher_cache.py --study-out study_out --methods rkd --seed 7
    python bench/bench_teacher_cache.py --quick                          # a smoke test (own tiny teacher)

``--study-out`` is the folder of an ``ekd-demo --study`` run: its ``teacher/`` is the teacher (its
benchmark is generated under ``$EKD_DATA_DIR`` if missing). The figures are the runs' own records
(``results.json``): ``fit_time_s`` (training only) and ``wall_time_s`` (the whole run, evaluation
included), and the average accuracy as a check that both runs learned alike (same seed; the cache
stores float16 embeddings, so they are close, not equal).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ekd.cli.demo import QUICK_OVERRIDES, STUDENTS, compose_run_config, ensure_teacher_cache

SETS = ("synth_frontal", "synth_pose", "synth_age")


def student_command(experiment: str, overrides: list[str], folder: Path) -> list[str]:
    return ["ekd-train", f"experiment={experiment}", *overrides, f"hydra.run.dir={folder}"]


def run_side_by_side(commands: list[list[str]]) -> None:
    """Run every command at once, each with one intra-op thread, until all have ended."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    processes = [
        subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for c in commands
    ]
    for command, process in zip(commands, processes):
        _, err = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{err[-3000:]}")


def record(folder: Path) -> dict:
    results = json.loads((folder / "results.json").read_text())
    return {
        "fit": results["fit_time_s"],
        "wall": results["wall_time_s"],
        "avg": 100 * sum(results["metrics"][s]["accuracy"] for s in SETS) / len(SETS),
        "used": (results.get("teacher_cache") or {}).get("used"),
    }


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
    args = parser.parse_args(argv)
    if args.quick == (args.study_out is not None):
        parser.error("give exactly one of --study-out and --quick")
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
            ratios = f"{a['fit'] / b['fit']:.2f}x | {a['wall'] / b['wall']:.2f}x"
            print(
                f"| {method} | {a['fit']:.0f} / {a['wall']:.0f} | {b['fit']:.0f} / {b['wall']:.0f} "
                f"| {ratios} | {a['avg']:.2f} / {b['avg']:.2f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
