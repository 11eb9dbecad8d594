"""Is ``ekd-demo --jobs 2`` worth it? Training images/s of the synthetic student with one process using
every thread against two processes with one thread each, side by side in one call.

    python bench/bench_parallel_runs.py            # on the 2-core machine: threads 2 vs 2 x 1

Each measurement trains the demo's student (MobileFaceNet, width 0.25, 128-d) on random 112 x 112
batches of 32 for ``--steps`` SGD steps, with and without a forward of the demo's teacher (iresnet18/8,
as an online-teacher distillation step does); the two-process figure is the sum of both processes'
rates, measured while both run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def worker(threads: int, steps: int) -> None:
    import torch

    from ekd.models import create_backbone

    torch.set_num_threads(threads)
    student = create_backbone("mobilefacenet", embedding_size=128, width_mult=0.25)
    teacher = create_backbone("iresnet18", embedding_size=128, base_width=8).eval()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01)
    images = torch.randn(32, 3, 112, 112)

    def step(with_teacher: bool) -> None:
        if with_teacher:
            with torch.no_grad():
                teacher(images)
        loss = student(images).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for with_teacher in (False, True):
        for _ in range(3):
            step(with_teacher)
        start = time.perf_counter()
        for _ in range(steps):
            step(with_teacher)
        rate = 32 * steps / (time.perf_counter() - start)
        print(f"{'teacher' if with_teacher else 'plain'} {rate:.1f}", flush=True)


def measure(processes: int, threads: int, steps: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--worker", str(threads), "--steps", str(steps)]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    totals: dict[str, float] = {}
    for run in runs:
        out, _ = run.communicate()
        for line in out.splitlines():
            kind, rate = line.split()
            totals[kind] = totals.get(kind, 0.0) + float(rate)
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, args.steps)
        return
    cpus = os.cpu_count() or 1
    one = measure(1, cpus, args.steps)
    two = measure(2, max(1, cpus // 2), args.steps)
    print(f"| step | 1 process x {cpus} threads | 2 processes x {max(1, cpus // 2)} | ratio |")
    print("|---|---:|---:|---:|")
    for kind in ("plain", "teacher"):
        print(f"| {kind} | {one[kind]:.0f} img/s | {two[kind]:.0f} img/s | {two[kind] / one[kind]:.2f}x |")


if __name__ == "__main__":
    main()
