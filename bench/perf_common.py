"""Shared pieces of the performance benchmarks: real training steps of the ekd Lightning modules run by
hand (no Trainer), a random teacher file, a teacher cache with stand-in values, timing helpers, and
whole ``ekd-train`` runs side by side (one thread each) with the figures of their ``results.json``.

The step is ``module.training_step(batch)`` + backward + SGD step, i.e. exactly the code a Trainer
runs per batch (the loop overhead is measured separately in bench_lightning_loop.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pytorch_lightning.utilities import move_data_to_device

from ekd.data.batch import FaceBatch, as_face_batch
from ekd.data.datasets import FaceRecordDataset, write_face_records
from ekd.data.images import encode_jpeg
from ekd.distill.cache import (
    EMBEDDINGS_FILE,
    FLIPPED_FILE,
    TeacherEmbeddingCache,
    finalize_cache,
    make_index,
    prepare_cache,
)
from ekd.models import create_backbone, file_sha256

HEAD_KW: dict[str, Any] = {"s": 64.0, "m": 0.5}


def teacher_file(directory: Path, name: str = "iresnet50", embedding_size: int = 512) -> Path:
    path = directory / f"{name}.pth"
    torch.manual_seed(1)
    torch.save(create_backbone(name, embedding_size=embedding_size).state_dict(), path)
    return path


def stand_in_cache(
    directory: Path, teacher: str, teacher_path: Path, num_images: int, num_classes: int, dim: int = 512
) -> tuple[Path, FaceRecordDataset]:
    """A real cache folder over a real (tiny) RecordIO dataset, filled with random values: the benchmark
    measures the look-up, not the teacher (building it with iresnet50 would take minutes on a CPU)."""
    rng = np.random.default_rng(0)
    labels = np.sort(rng.integers(0, num_classes, num_images))
    blank = encode_jpeg(np.zeros((112, 112, 3), dtype=np.uint8))
    data = directory / "data"
    write_face_records(data, [blank] * num_images, labels, num_classes=num_classes)
    dataset = FaceRecordDataset(data)
    out = prepare_cache(directory / "cache", num_images, dim, dataset.labels)
    for name in (EMBEDDINGS_FILE, FLIPPED_FILE):
        array = np.load(out / name, mmap_mode="r+")
        array[:] = rng.standard_normal(array.shape).astype(np.float16)
        array.flush()
    finalize_cache(out, make_index(dataset, teacher, file_sha256(teacher_path), dim))
    return out, dataset


class StepRunner:
    """One optimisation step of a module on a fixed batch: training_step, backward, SGD step.

    With ``cache`` (a teacher embedding cache; ``batch`` then carries indices and flips), every step
    first does what ``FaceDataModule.on_before_batch_transfer`` does per batch: check the labels, look
    the teacher embeddings up on the CPU and move them to the device with the batch.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        batch: tuple | FaceBatch,
        device: str = "cpu",
        autocast: str | None = None,
        cache: TeacherEmbeddingCache | None = None,
    ):
        self.module = module.to(device).train()
        self.host_batch = as_face_batch(batch)
        self.batch = move_data_to_device(self.host_batch, torch.device(device))
        params = [p for p in module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
        self.device = device
        self.autocast = autocast
        self.cache = cache

    def __call__(self) -> None:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.autocast or "")
        batch = self.batch
        if self.cache is not None:
            host = self.host_batch
            self.cache.check_labels(host.indices, host.labels)
            embedding = self.cache.lookup(host.indices, host.flipped).to(self.device, non_blocking=True)
            batch = dataclasses.replace(batch, teacher_embedding=embedding)
        with torch.autocast(
            device_type=torch.device(self.device).type, dtype=dtype, enabled=dtype is not None
        ):
            loss = self.module.training_step(batch, 0)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_interleaved(
    fns: dict[str, Callable[[], None]], repeats: int, warmup: int = 1, device: str = "cpu"
) -> dict[str, float]:
    """Median seconds per call of each function, measured round-robin (A B C A B C ...) so that a
    shared, noisy CPU affects every variant alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="ekd-bench-"))


def welch_between_rows(a: dict[str, str], b: dict[str, str]) -> Any:
    """Welch's test of mean(a) - mean(b) for two rows of an ``ekd-table`` comparison.csv (their ``n``,
    ``mean`` and ``std``); None where a side has no std (a single run) or the test is undefined."""
    from ekd.report.table import welch_from_summary

    if not (a["std"] and b["std"]):
        return None
    return welch_from_summary(
        *(float(a["mean"]), float(a["std"]) ** 2, int(a["n"])),
        *(float(b["mean"]), float(b["std"]) ** 2, int(b["n"])),
    )


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def emit(text: str, markdown: str | None) -> str:
    """Print a result block and, when ``markdown`` names a file, append it there."""
    print(text)
    if markdown:
        with open(markdown, "a") as handle:
            handle.write(text + "\n")
    return text


# ------------------------------------------------------------------ whole ekd-train runs, side by side

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


def record(folder: Path) -> dict[str, Any]:
    """A finished run's fit and whole-run seconds, training images/s, average accuracy over the synthetic
    pair sets (%) and whether it read a teacher cache."""
    results = json.loads((folder / "results.json").read_text())
    return {
        "fit": results["fit_time_s"],
        "wall": results["wall_time_s"],
        "images_per_s": results.get("train_images_per_s"),
        "avg": 100 * sum(results["metrics"][s]["accuracy"] for s in SETS) / len(SETS),
        "used": (results.get("teacher_cache") or {}).get("used"),
    }


def time_cells(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Markdown cells of two :func:`record` s side by side: fit / whole run of each, then both ratios."""
    return (
        f"{a['fit']:.0f} / {a['wall']:.0f} | {b['fit']:.0f} / {b['wall']:.0f} "
        f"| {a['fit'] / b['fit']:.2f}x | {a['wall'] / b['wall']:.2f}x"
    )
