"""Tiny real data, teacher files and trainers shared by the reliability tests (112 x 112 inputs, width 8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from ekd.data.datasets import write_face_records
from ekd.data.images import encode_png
from ekd.models import create_backbone

BACKBONE = "iresnet18"
BACKBONE_KW: dict[str, Any] = {"base_width": 8}
EMB = 16
HEAD_KW: dict[str, Any] = {"s": 16.0, "m": 0.3}


def write_records(root: Path, labels: list[int], seed: int = 0) -> Path:
    """insightface train.rec/.idx/property of random 112 x 112 images (PNG, so pixels are exact)."""
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in labels]
    write_face_records(root, [encode_png(image) for image in images], labels)
    return root


def teacher_file(path: Path, seed: int = 2) -> Path:
    """An insightface-style teacher: a bare backbone state_dict."""
    torch.manual_seed(seed)
    torch.save(create_backbone(BACKBONE, embedding_size=EMB, **BACKBONE_KW).state_dict(), path)
    return path


def module_options(teacher_path: Path | None = None, objectives: dict | None = None, **kwargs: Any) -> dict:
    """RecognitionModule arguments (DistillationModule's with a teacher file and ``objectives``)."""
    network = {"name": BACKBONE, "embedding_size": EMB, "kwargs": dict(BACKBONE_KW)}
    options: dict[str, Any] = {
        "student": network,
        "num_classes": 4,
        "head": {"name": "arcface", "kwargs": HEAD_KW},
        "optim": {"lr": 0.05, "momentum": 0.9},
        "schedule": {"name": "constant"},
    }
    if teacher_path is not None:
        options.update(
            teacher={**network, "checkpoint": str(teacher_path)}, distill={"objectives": objectives}
        )
    options.update(kwargs)
    return options


def trainer(**kwargs: Any) -> pl.Trainer:
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "use_distributed_sampler": False,
    }
    options.update(kwargs)
    return pl.Trainer(**options)
