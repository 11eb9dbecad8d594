"""Run every benchmark script of bench/ one after the other and collect their output.

    python bench/run_all.py [--quick] [--gpu] [--markdown FILE]

``--quick`` runs each on tiny sizes (a check that every script works, not a measurement): scripts
with their own ``--quick`` get it, the others get small sizes listed in ``QUICK_ARGS``; a script that
needs prepared data gets it generated in a temporary folder. ``--gpu`` adds gpu_bench.py (otherwise
left out: it is meant for a lent GPU machine). Exit status 1 when any script fails.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOT_BENCHMARKS = {"run_all.py", "perf_common.py"}
# small sizes for the scripts without a --quick flag of their own
QUICK_ARGS: dict[str, list[str]] = {
    "bench_verification.py": ["--pairs", "600", "--repeats", "1"],
    "bench_recordio.py": ["--images", "100", "--rounds", "1"],
    "bench_parallel_runs.py": ["--steps", "1"],
    "calibrate_synthetic.py": ["--epochs", "1", "--batch-size", "16", "--models", "small"],
}
NEEDS_SYNTHETIC_ROOT = {"calibrate_synthetic.py"}
# scripts whose full measurement needs the output of a long run: only their --quick form runs here
ONLY_QUICK = {
    "bench_teacher_cache.py": "needs a finished study: bench_teacher_cache.py --study-out DIR",
    "bench_channels_last.py": "needs a study folder: bench_channels_last.py --study-out DIR",
}


def scripts(include_gpu: bool) -> list[Path]:
    found = sorted(p for p in HERE.glob("*.py") if p.name not in NOT_BENCHMARKS)
    return [p for p in found if include_gpu or p.name != "gpu_bench.py"]


def arguments(script: Path, quick: bool, tmp: Path) -> list[str]:
    args: list[str] = []
    if script.name in NEEDS_SYNTHETIC_ROOT:
        root = tmp / "synthetic"
        if not (root / "train.rec").is_file():
            from ekd.data.synthetic import SyntheticConfig, write_synthetic

            size = (
                dict(
                    identities=20,
                    images_per_identity=4,
                    pairs=40,
                    heldout_identities=10,
                    template_identities=0,
                )
                if quick
                else {}
            )
            write_synthetic(root, SyntheticConfig(**size))
        args += ["--root", str(root)]
    if quick:
        args += ["--quick"] if "--quick" in script.read_text() else QUICK_ARGS.get(script.name, [])
    return args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check that every script runs")
    parser.add_argument("--gpu", action="store_true", help="include gpu_bench.py")
    parser.add_argument("--markdown", default=None, help="append every script's output to this file")
    args = parser.parse_args(argv)
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ekd-bench-all-") as tmp:
        for script in scripts(args.gpu):
            if not args.quick and script.name in ONLY_QUICK:
                print(f"## {script.name}: skipped ({ONLY_QUICK[script.name]})\n", flush=True)
                continue
            command = [sys.executable, str(script), *arguments(script, args.quick, Path(tmp))]
            print(f"## {script.name}: {' '.join(command[1:])}", flush=True)
            start = time.perf_counter()
            result = subprocess.run(command, capture_output=True, text=True)
            elapsed = time.perf_counter() - start
            print(result.stdout)
            if result.returncode != 0:
                failed.append(script.name)
                print(result.stderr[-4000:], file=sys.stderr)
            print(f"({script.name}: exit {result.returncode}, {elapsed:.1f} s)\n", flush=True)
            if args.markdown:
                with open(args.markdown, "a") as handle:
                    handle.write(f"## {script.name}\n\n{result.stdout}\n")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print("all benchmark scripts ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
