"""Adapters between student and teacher feature maps (FitNet hints, ShrinkTeaNet stage terms).

A regressor r = BN(Conv1x1(C_s -> C_t)) maps the student's map into the teacher's channel space; it
is built only when the channel counts differ, and it is built at construction time (from the
backbones' ``stage_shapes``) so that its parameters exist before the optimiser is created. It belongs
to the objective, hence to the trainable student side.

Spatial mismatch: the larger map is reduced by adaptive average pooling to the smaller size (each
axis to the smaller of the two), before the regressor; a 1x1 convolution commutes with average
pooling, so this only saves work (BN batch statistics then come from the pooled map).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ekd.distill.common import compute_dtype

Shapes = Mapping[str, Sequence[int]]


class FeatureRegressor(nn.Sequential):
    """1x1 convolution (no bias) + BatchNorm2d: the FitNet regressor from C_s to C_t channels."""

    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        super().__init__(
            nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(teacher_channels),
        )
        self.student_channels = student_channels
        self.teacher_channels = teacher_channels


def stage_channels(objective: str, stage: str, shapes: Shapes | None, side: str) -> int | None:
    """Channel count of ``stage`` in a ``stage_shapes``-like mapping (None when no mapping is given)."""
    if shapes is None:
        return None
    if stage not in shapes:
        raise ValueError(
            f"distillation objective {objective!r}: {side}_shapes has no entry {stage!r} "
            f"(it has {sorted(shapes)})"
        )
    shape = tuple(shapes[stage])
    if len(shape) != 3 or any(int(v) <= 0 for v in shape):
        raise ValueError(
            f"distillation objective {objective!r}: {side}_shapes[{stage!r}] must be (C, H, W) with "
            f"positive sizes, got {shape}"
        )
    return int(shape[0])


def build_regressor(
    objective: str, stage: str, student_shapes: Shapes | None, teacher_shapes: Shapes | None
) -> FeatureRegressor | None:
    """A regressor for ``stage`` when both shape mappings are given and the channel counts differ."""
    c_s = stage_channels(objective, stage, student_shapes, "student")
    c_t = stage_channels(objective, stage, teacher_shapes, "teacher")
    if c_s is None or c_t is None or c_s == c_t:
        return None
    return FeatureRegressor(c_s, c_t)


def align_maps(
    objective: str, stage: str, student: Tensor, teacher: Tensor, regressor: nn.Module | None
) -> tuple[Tensor, Tensor]:
    """Student and teacher maps of ``stage`` brought to one N x C_t x H x W shape (see module docstring)."""
    if student.ndim != 4 or teacher.ndim != 4:
        raise ValueError(
            f"distillation objective {objective!r}: {stage} maps must be N x C x H x W, got student "
            f"{tuple(student.shape)} and teacher {tuple(teacher.shape)}"
        )
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"distillation objective {objective!r}: {stage} batch sizes differ "
            f"({student.shape[0]} vs {teacher.shape[0]})"
        )
    student = compute_dtype(student)
    teacher = teacher.detach()
    size = (min(student.shape[2], teacher.shape[2]), min(student.shape[3], teacher.shape[3]))
    if tuple(student.shape[2:]) != size:
        student = F.adaptive_avg_pool2d(student, size)
    if tuple(teacher.shape[2:]) != size:
        teacher = F.adaptive_avg_pool2d(teacher, size)
    if regressor is not None:
        if student.shape[1] != regressor.student_channels or teacher.shape[1] != regressor.teacher_channels:
            raise ValueError(
                f"distillation objective {objective!r}: the {stage} regressor maps "
                f"{regressor.student_channels} -> {regressor.teacher_channels} channels, but the maps have "
                f"{student.shape[1]} (student) and {teacher.shape[1]} (teacher)"
            )
        student = regressor(student)
    elif student.shape[1] != teacher.shape[1]:
        raise ValueError(
            f"distillation objective {objective!r}: {stage} has {student.shape[1]} student channels and "
            f"{teacher.shape[1]} teacher channels but no regressor was built; create the objective with "
            f"student_shapes= and teacher_shapes= (the backbones' stage_shapes)"
        )
    return student, teacher.to(student.dtype)


def parse_shapes(objective: str, side: str, shapes: Shapes | None) -> dict[str, tuple[int, ...]] | None:
    """A plain dict copy of a ``stage_shapes`` mapping (Hydra passes DictConfig / ListConfig)."""
    if shapes is None:
        return None
    if not isinstance(shapes, Mapping):
        raise ValueError(
            f"distillation objective {objective!r}: {side}_shapes must map stage names to (C, H, W), "
            f"got {type(shapes).__name__}"
        )
    return {str(k): tuple(int(v) for v in shape) for k, shape in shapes.items()}


def flatten(x: Tensor) -> Tensor:
    """N x ... -> N x (...), the per-sample vector of a map."""
    return torch.flatten(x, start_dim=1)
