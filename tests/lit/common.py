"""Tiny models, data and trainers shared by the Lightning-module tests (16 x 16 inputs, widths of 8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from ekd.lit.recognition import RecognitionModule

SIZE = (16, 16)
EMB = 16
NUM_CLASSES = 4
STUDENT = "iresnet18"
STUDENT_KW: dict[str, Any] = {"base_width": 8, "input_size": SIZE}
TEACHER = "iresnet18"
TEACHER_KW: dict[str, Any] = {"base_width": 8, "input_size": SIZE, "embedding_size": EMB}
# ArcFace at s = 64 saturates on 4 classes; s = 16 keeps the toy problem well conditioned
HEAD_KW: dict[str, Any] = {"s": 16.0, "m": 0.3}


def synthetic_faces(per_class: int = 4, num_classes: int = NUM_CLASSES, seed: int = 0) -> TensorDataset:
    """Learnable toy data: one fixed random pattern per class plus noise; labels grouped by class."""
    generator = torch.Generator().manual_seed(seed)
    patterns = torch.randn(num_classes, 3, *SIZE, generator=generator)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    images = patterns[labels] + 0.3 * torch.randn(len(labels), 3, *SIZE, generator=generator)
    return TensorDataset(images.clamp(-1, 1), labels)


def loader(per_class: int = 4, batch_size: int = 8, shuffle: bool = False, seed: int = 0) -> DataLoader:
    return DataLoader(synthetic_faces(per_class, seed=seed), batch_size=batch_size, shuffle=shuffle)


def trainer(**kwargs: Any) -> pl.Trainer:
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    options.update(kwargs)
    return pl.Trainer(**options)


def backbone_section(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A ``student`` / ``teacher`` section (BackboneConfig fields) from factory options incl. the size."""
    options = dict(kwargs)
    return {"name": name, "embedding_size": options.pop("embedding_size", EMB), "kwargs": options}


STUDENT_SECTION = backbone_section(STUDENT, STUDENT_KW)
TEACHER_SECTION = backbone_section(TEACHER, TEACHER_KW)
HEAD_SECTION: dict[str, Any] = {"name": "arcface", "kwargs": HEAD_KW}


def recognition_module(**kwargs: Any) -> RecognitionModule:
    options: dict[str, Any] = {
        "student": STUDENT_SECTION,
        "num_classes": NUM_CLASSES,
        "head": HEAD_SECTION,
        "optim": {"lr": 0.05},
        "schedule": {"name": "constant"},
    }
    options.update(kwargs)
    return RecognitionModule(**options)


def train_teacher_checkpoint(directory: Path, steps: int = 4) -> Path:
    """A real Lightning checkpoint of a RecognitionModule teacher (keys student.*, recognition.*)."""
    torch.manual_seed(1)
    module = recognition_module(student=backbone_section(STUDENT, {"base_width": 8, "input_size": SIZE}))
    fit = trainer(max_steps=steps)
    fit.fit(module, loader())
    path = directory / "teacher.ckpt"
    fit.save_checkpoint(path)
    return path


def plain_teacher_file(directory: Path) -> Path:
    """An insightface-style teacher file: a bare backbone state_dict without head."""
    from ekd.models import create_backbone

    torch.manual_seed(2)
    backbone = create_backbone(TEACHER, **TEACHER_KW)
    path = directory / "backbone.pth"
    torch.save(backbone.state_dict(), path)
    return path


class CaptureObjectiveInputs:
    """Wraps an objective's forward to keep the (student, teacher, labels) it received."""

    def __init__(self, objective: torch.nn.Module) -> None:
        self.calls: list[tuple[Any, Any, torch.Tensor]] = []
        self._forward = objective.forward
        objective.forward = self  # type: ignore[method-assign]

    def __call__(self, student, teacher, labels):
        self.calls.append((student, teacher, labels))
        return self._forward(student, teacher, labels)
