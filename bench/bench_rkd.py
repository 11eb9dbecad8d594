"""RKD loss, forward + backward: ekd's angle term (law of cosines on B x B squared distances, analytic
backward, fused kernel) against the authors' RKDLoss, with time, peak memory and float32 error.

Reference: ``RKDLoss`` of RepDistiller (github.com/HobbitLong/RepDistiller, distiller_zoo/RKD.py; TFace's
recognition/tasks/ekd/distillation/rkd.py is the same code), restated in ``reference_rkd`` below with the
same arithmetic, operation for operation (Gram-matrix pdist clamped at eps, mean over d > 0, B x B x D
normalised differences, batched product, Smooth-L1 means, weights 25 / 50).

Timing: both variants (and ekd's eager fallback) on the same random 512-d student / teacher, forward +
backward of the whole loss (distance + angle), 1 thread, rounds interleaved (A B C, B C A, C A B, ...:
the order rotates, since the step right after the reference pays for re-faulting the memory it freed);
median, min and max over the rounds and the ratio of the medians (with the min-max of the per-round
ratios). Memory: each (variant, B) in a fresh subprocess, peak resident memory of one forward + backward
above the resident memory just before it (Linux VmHWM reset through /proc/self/clear_refs; glibc is told
to return freed blocks at once, so the baseline is what is live, which also makes that step slower). The
reference is not run at B = 2048: its B x B x D tensors alone are 8 GiB each in float32. Accuracy:
float32 loss against the reference evaluated in float64 on the same (float32) inputs, plain and with a
common offset of 10 added to every embedding.

    python bench/bench_rkd.py [--batches 64,256,512] [--dim 512] [--repeats 5]
                              [--memory-batches 256,512,2048] [--quick] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from perf_common import emit, markdown_table

from ekd.distill import create as create_objective
from ekd.models.features import Features


def _pdist(e: torch.Tensor, squared: bool = False, eps: float = 1e-12) -> torch.Tensor:
    """RepDistiller ``RKDLoss.pdist``."""
    e_square = e.pow(2).sum(dim=1)
    prod = e @ e.t()
    res = (e_square.unsqueeze(1) + e_square.unsqueeze(0) - 2 * prod).clamp(min=eps)
    if not squared:
        res = res.sqrt()
    res = res.clone()
    res[range(len(e)), range(len(e))] = 0
    return res


def reference_rkd(f_s: torch.Tensor, f_t: torch.Tensor, w_d: float = 25, w_a: float = 50) -> torch.Tensor:
    """RepDistiller ``RKDLoss.forward`` (distance + angle), unchanged arithmetic."""
    student = f_s.view(f_s.shape[0], -1)
    teacher = f_t.view(f_t.shape[0], -1)
    with torch.no_grad():
        t_d = _pdist(teacher, squared=False)
        mean_td = t_d[t_d > 0].mean()
        t_d = t_d / mean_td
    d = _pdist(student, squared=False)
    mean_d = d[d > 0].mean()
    d = d / mean_d
    loss_d = F.smooth_l1_loss(d, t_d)
    with torch.no_grad():
        td = teacher.unsqueeze(0) - teacher.unsqueeze(1)
        norm_td = F.normalize(td, p=2, dim=2)
        t_angle = torch.bmm(norm_td, norm_td.transpose(1, 2)).view(-1)
    sd = student.unsqueeze(0) - student.unsqueeze(1)
    norm_sd = F.normalize(sd, p=2, dim=2)
    s_angle = torch.bmm(norm_sd, norm_sd.transpose(1, 2)).view(-1)
    loss_a = F.smooth_l1_loss(s_angle, t_angle)
    return w_d * loss_d + w_a * loss_a


VARIANTS = ("reference", "ekd", "ekd eager")


def _inputs(batch: int, dim: int, offset: float = 0.0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(batch)
    student = (torch.randn(batch, dim, generator=generator, dtype=torch.float64) + offset).to(dtype)
    teacher = (torch.randn(batch, dim, generator=generator, dtype=torch.float64) + offset).to(dtype)
    return student, teacher


def make_loss(variant: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if variant == "reference":
        return reference_rkd
    objective = create_objective("rkd", angle_kernel="eager" if variant == "ekd eager" else "auto")
    labels = torch.zeros(1)
    return lambda s, t: objective(Features(embedding=s), Features(embedding=t), labels)


def make_step(variant: str, batch: int, dim: int) -> Callable[[], float]:
    loss_fn = make_loss(variant)
    student, teacher = _inputs(batch, dim)
    student.requires_grad_(True)

    def step() -> float:
        loss = loss_fn(student, teacher)
        loss.backward()
        student.grad = None
        return float(loss.detach())

    return step


def time_rounds(steps: dict[str, Callable[[], float]], repeats: int) -> tuple[dict, dict, dict]:
    """Warm-up seconds (first call, includes compilation), per-round seconds, losses of each variant."""
    warmup, losses = {}, {}
    for name, step in steps.items():
        start = time.perf_counter()
        losses[name] = step()
        warmup[name] = time.perf_counter() - start
    rounds: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for index in range(repeats):
        # rotate the order (see the module docstring)
        for name in names[index % len(names) :] + names[: index % len(names)]:
            start = time.perf_counter()
            steps[name]()
            rounds[name].append(time.perf_counter() - start)
    return warmup, rounds, losses


# ---- memory: one (variant, B) per subprocess --------------------------------------------------------


def _status(field: str) -> int:
    """A VmXXX field of /proc/self/status, in KiB."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1))


def child(variant: str, batch: int, dim: int, warm_batch: int) -> None:
    """Run in a fresh process: warm up (kernels, compilation) on ``warm_batch``, then measure one step."""
    torch.set_num_threads(1)
    make_step(variant, warm_batch, dim)()
    step = make_step(variant, batch, dim)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    baseline = _status("VmRSS")
    start = time.perf_counter()
    loss = step()
    seconds = time.perf_counter() - start
    peak = _status("VmHWM")
    extra = (peak - baseline) / 1024
    print(json.dumps(dict(variant=variant, batch=batch, seconds=seconds, peak_mib=extra, loss=loss)))


def measure_memory(variant: str, batch: int, dim: int, warm_batch: int) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    command = [sys.executable, __file__, "--child", variant, str(batch), str(dim), str(warm_batch)]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        return dict(variant=variant, batch=batch, error=result.stderr.strip().splitlines()[-1:])
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---- float32 error ----------------------------------------------------------------------------------


def accuracy_rows(batch: int, dim: int) -> list[list[str]]:
    rows = []
    ekd_loss = make_loss("ekd")
    for offset in (0.0, 10.0):
        s32, t32 = _inputs(batch, dim, offset)
        with torch.no_grad():
            truth = float(reference_rkd(s32.double(), t32.double()))
            ref32 = float(reference_rkd(s32, t32))
            ours32 = float(ekd_loss(s32, t32))
            ours64 = float(ekd_loss(s32.double(), t32.double()))
        rows.append(
            [
                f"offset {offset:g}",
                f"{truth:.10g}",
                f"{abs(ref32 - truth) / truth:.1e}",
                f"{abs(ours32 - truth) / truth:.1e}",
                f"{abs(ours64 - truth) / truth:.1e}",
            ]
        )
    return rows


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", default="64,256,512")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-batches", default="256,512,2048", help="ekd; the reference up to 512")
    parser.add_argument("--accuracy-batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--markdown", default=None)
    parser.add_argument("--child", nargs=4, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        variant, batch, dim, warm = args.child
        child(variant, int(batch), int(dim), int(warm))
        return ""
    if args.quick:
        args.batches, args.dim, args.repeats = "8,16", 16, 1
        args.memory_batches, args.accuracy_batch = "32", 16
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]

    timing_rows, warm_rows = [], []
    for batch in batches:
        steps = {variant: make_step(variant, batch, args.dim) for variant in VARIANTS}
        warmup, rounds, losses = time_rounds(steps, args.repeats)
        ref, ours, eager = rounds["reference"], rounds["ekd"], rounds["ekd eager"]
        ratio = statistics.median(ref) / statistics.median(ours)
        per_round = [r / o for r, o in zip(ref, ours)]
        ratio_eager = statistics.median(ref) / statistics.median(eager)
        per_round_eager = [r / e for r, e in zip(ref, eager)]
        timing_rows.append(
            [
                batch,
                _spread(ref),
                _spread(ours),
                _spread(eager),
                f"**{ratio:.1f}x** ({min(per_round):.1f}-{max(per_round):.1f})",
                f"{ratio_eager:.1f}x ({min(per_round_eager):.1f}-{max(per_round_eager):.1f})",
                f"{abs(losses['ekd'] - losses['reference']) / abs(losses['reference']):.1e}",
            ]
        )
        warm_rows.append([batch, *(f"{warmup[v]:.2f}" for v in VARIANTS)])

    memory = []
    memory_batches = [int(b) for b in args.memory_batches.split(",")]
    # ekd warms up at B = 256 so that its kernel is compiled before the measured step (not in --quick)
    warm_ekd = min(batches) if args.quick else 256
    for batch in memory_batches:
        variants = ["ekd"] + (["reference"] if batch <= 512 else [])
        if batch == max(memory_batches):
            variants.append("ekd eager")
        for variant in variants:
            warm = warm_ekd if variant == "ekd" else min(batches)
            memory.append(measure_memory(variant, batch, args.dim, warm))
    memory_rows = [
        [m["variant"], m["batch"], f"{m['peak_mib']:.0f}", f"{m['seconds']:.2f}"]
        if "peak_mib" in m
        else [m["variant"], m["batch"], f"failed: {m['error']}", ""]
        for m in memory
    ]

    text = (
        f"RKD loss (distance + angle), forward + backward, D = {args.dim}, {args.threads} thread(s), "
        f"seconds: median (min-max) of {args.repeats} interleaved rounds; ratio = reference / ekd medians "
        f"(min-max of the per-round ratios); torch {torch.__version__}\n\n"
        + markdown_table(
            [
                "B",
                "reference RKDLoss (s)",
                "ekd (s)",
                "ekd eager fallback (s)",
                "speed-up",
                "speed-up, eager",
                "loss rel. diff.",
            ],
            timing_rows,
        )
        + "\n\nFirst call (s; ekd compiles its kernel at the first B >= 256 of the process)\n\n"
        + markdown_table(["B", *VARIANTS], warm_rows)
        + "\n\nPeak memory of one forward + backward above the live memory before it (fresh process each)\n\n"
        + markdown_table(["variant", "B", "peak extra (MiB)", "s (this allocator setting)"], memory_rows)
        + "\n\nfloat32 loss error (relative) against the reference in float64 on the same inputs, "
        + f"B = {args.accuracy_batch}\n\n"
        + markdown_table(
            ["inputs", "loss (float64 reference)", "reference float32", "ekd float32", "ekd float64"],
            accuracy_rows(args.accuracy_batch, args.dim),
        )
        + "\n"
    )
    return emit(text, args.markdown)


if __name__ == "__main__":
    main()
