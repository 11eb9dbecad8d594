"""One prepared GPU benchmark (< 8 minutes): images/s of MobileFaceNet and ResNet18 students trained
plainly and distilled from iresnet50 with the teacher online or read from the embedding cache, under
bf16 autocast with channels_last, all in one process. Prints the GPU name and a markdown table.

Each variant is ekd's real ``training_step`` + backward + SGD step (bench/perf_common.py), timed with
CUDA synchronisation, rounds interleaved across variants.

    python bench/gpu_bench.py [--batch 128] [--repeats 10] [--markdown FILE]
    python bench/gpu_bench.py --quick --device cpu      # tiny sizes: checks that it runs anywhere
"""

from __future__ import annotations

import argparse
import time

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
from ekd.lit.distillation import DistillationModule
from ekd.lit.recognition import RecognitionModule


def _variants(args: argparse.Namespace, student: str, teacher: str, teacher_path, cache_dir, labels) -> dict:
    common = dict(
        student={"name": student},
        num_classes=args.classes,
        head={"kwargs": HEAD_KW},
        optim={"lr": 0.1},
        schedule={"name": "constant"},
        channels_last=args.channels_last,
    )
    teacher_section = {"name": teacher, "checkpoint": str(teacher_path)}
    objectives = {"ekd": {"weight": 1.0}}
    distill = dict(teacher=teacher_section, distill={"objectives": objectives})
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch, 3, 112, 112, generator=generator) * 2 - 1
    indices = torch.arange(args.batch)
    flipped = indices % 2 == 0
    cached = DistillationModule(
        **common, teacher=teacher_section, distill={"objectives": objectives, "teacher_cache": str(cache_dir)}
    )
    autocast = None if args.precision == "32" else args.precision
    # each step looks the batch up in the cache, as FaceDataModule does before the device transfer
    served = FaceBatch(images, labels, indices, flipped)
    return {
        f"{student} plain": StepRunner(RecognitionModule(**common), (images, labels), args.device, autocast),
        f"{student} distill cached": StepRunner(
            cached, served, args.device, autocast, cache=cached.teacher_cache
        ),
        f"{student} distill online": StepRunner(
            DistillationModule(**common, **distill), (images, labels), args.device, autocast
        ),
    }


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--students", default="mobilefacenet,resnet18")
    parser.add_argument("--teacher", default="iresnet50")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--classes", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--precision", choices=("32", "bf16"), default="bf16")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat")
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.teacher, args.batch, args.classes, args.repeats = "iresnet18", 2, 10, 1
    started = time.perf_counter()
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        name = torch.cuda.get_device_name(torch.device(args.device))
    else:
        name = f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}", flush=True)
    directory = workdir()
    teacher_path = teacher_file(directory, args.teacher)
    cache_dir, dataset = stand_in_cache(directory, args.teacher, teacher_path, 4 * args.batch, args.classes)
    labels = torch.as_tensor(dataset.labels[: args.batch])
    rows = []
    for student in args.students.split(","):
        runners = _variants(args, student, args.teacher, teacher_path, cache_dir, labels)
        seconds = time_interleaved(runners, args.repeats, warmup=1 if args.quick else 3, device=args.device)
        plain = seconds[f"{student} plain"]
        rows += [
            [variant, f"{args.batch / s:.0f}", f"{1000 * s:.1f}", f"{s / plain:.2f}x"]
            for variant, s in seconds.items()
        ]
        for runner in runners.values():  # free the device memory before the next student
            runner.module.cpu()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    table = markdown_table(["variant", "images / s", "ms / step", "step vs plain"], rows)
    text = (
        f"GPU benchmark on {name}: teacher {args.teacher}, EKD objective, batch {args.batch}, "
        f"{args.classes} classes, "
        f"precision {args.precision}, channels_last {args.channels_last}, median of {args.repeats}; "
        f"total {time.perf_counter() - started:.0f} s\n\n{table}\n"
    )
    return emit(text, args.markdown)


if __name__ == "__main__":
    main()
