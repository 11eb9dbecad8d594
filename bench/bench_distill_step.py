"""Distillation step with the teacher embedding cache vs with the online teacher vs plain student
training, side by side in one process (same student, head, batch and optimiser).

Each variant is the real ``training_step`` of ekd's Lightning modules (RecognitionModule,
DistillationModule with ``teacher_cache`` active, DistillationModule with the teacher online) plus
backward and an SGD step. Target: cached distillation <= 1.15 x the plain student step.

    python bench/bench_distill_step.py [--student mobilefacenet] [--teacher iresnet50] [--batch 16]
                                       [--objective ekd] [--repeats 5] [--quick] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import platform

import torch
from perf_common import (
    HEAD_KW,
    StepRunner,
    emit,
    markdown_table,
    stand_in_cache,
    teacher_file,
    time_interleaved,
    workdir,
)

from ekd.data.batch import FaceBatch
from ekd.distill.cache import TeacherEmbeddingCache
from ekd.lit.distillation import DistillationModule
from ekd.lit.recognition import RecognitionModule


def build(args: argparse.Namespace) -> dict[str, StepRunner]:
    directory = workdir()
    teacher_path = teacher_file(directory, args.teacher)
    cache_dir, dataset = stand_in_cache(
        directory, args.teacher, teacher_path, num_images=4 * args.batch, num_classes=args.classes
    )
    common = dict(
        student={"name": args.student},
        num_classes=args.classes,
        head={"kwargs": HEAD_KW},
        optim={"lr": 0.1},
        schedule={"name": "constant"},
    )
    objectives = {args.objective: {"weight": 1.0}}
    torch.manual_seed(0)
    images = torch.rand(args.batch, 3, 112, 112) * 2 - 1
    indices = torch.arange(args.batch)
    labels = torch.as_tensor(dataset.labels[: args.batch])
    flipped = indices % 2 == 0

    plain = RecognitionModule(**common)
    teacher = {"name": args.teacher, "checkpoint": str(teacher_path)}
    online = DistillationModule(**common, teacher=teacher, distill={"objectives": objectives})
    cached = DistillationModule(
        **common, teacher=teacher, distill={"objectives": objectives, "teacher_cache": str(cache_dir)}
    )
    assert isinstance(cached.teacher_cache, TeacherEmbeddingCache)
    # each step looks the batch up in the cache, as FaceDataModule does before the device transfer
    served = FaceBatch(images, labels, indices, flipped)
    return {
        "plain student": StepRunner(plain, (images, labels)),
        "distill, cached teacher": StepRunner(cached, served, cache=cached.teacher_cache),
        "distill, online teacher": StepRunner(online, (images, labels)),
    }


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--student", default="mobilefacenet")
    parser.add_argument("--teacher", default="iresnet50")
    parser.add_argument("--objective", default="ekd")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="tiny sizes (checks that the script runs)")
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.student, args.teacher, args.batch, args.repeats, args.classes = (
            "mobilefacenet",
            "iresnet18",
            4,
            1,
            10,
        )
    torch.set_num_threads(args.threads)
    runners = build(args)
    seconds = time_interleaved(runners, args.repeats)
    base = seconds["plain student"]
    rows = [
        [name, f"{1000 * s:.0f}", f"{s / base:.2f}x", f"{args.batch / s:.1f}"] for name, s in seconds.items()
    ]
    table = markdown_table(["variant", "ms / step", "vs plain", "images / s"], rows)
    text = (
        f"Distillation step, student {args.student}, teacher {args.teacher}, objective {args.objective}, "
        f"batch {args.batch}, {args.classes} classes, CPU {platform.processor() or platform.machine()}, "
        f"{args.threads} thread(s), median of {args.repeats} interleaved repeats\n\n{table}\n"
    )
    return emit(text, args.markdown)


if __name__ == "__main__":
    main()
