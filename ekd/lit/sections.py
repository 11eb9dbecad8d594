"""The configuration sections the training modules take: one definition, shared with the config schema.

``RecognitionModule(student=BackboneConfig, head=HeadConfig, optim=OptimConfig, ...)`` and
``DistillationModule(..., teacher=BackboneConfig, distill=DistillConfig)`` take these dataclasses (or
mappings of their fields, e.g. a Hydra config section), and ``ekd.config.TrainConfig`` is built from
the same classes, so the composed config is handed to the modules section by section
(:func:`ekd.lit.build_module`) and nothing copies keys one by one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, TypeVar  # noqa: UP035  (OmegaConf resolves these annotations at runtime)

from omegaconf import MISSING

from ekd.choices import StudentHeadInit, TeacherCentres, parse_choice

# OmegaConf 2.3 reads the annotations with ``typing.get_type_hints``: ``Optional[X]`` rather than
# ``X | None`` (Python 3.10).
# ruff: noqa: UP007, UP045

S = TypeVar("S")


def as_section(cls: type[S], value: S | Mapping[str, Any] | None, key: str) -> S:
    """``cls`` from an instance, a mapping (Hydra / OmegaConf dict; unknown keys are an error naming
    ``key``) or None (the defaults)."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping) or hasattr(value, "items"):
        known = {f.name for f in dataclasses.fields(cls)}
        given = dict(value.items())
        unknown = sorted(set(given) - known)
        if unknown:
            raise ValueError(f"{key}: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**given)
    raise TypeError(f"{key}: expected a {cls.__name__}, a mapping or None, got {type(value).__name__}")


@dataclass
class BackboneConfig:
    """A backbone from the registry (``ekd.models.create_backbone``): the student, or the teacher."""

    name: str = MISSING  # registry name: mobilefacenet, mbf, iresnet18, iresnet50, timm/<model>, ...
    label: str = ""  # display name in tables; the registry name when empty
    embedding_size: int = 512
    kwargs: dict[str, Any] = field(default_factory=dict)  # factory options (width, dropout, ...)
    checkpoint: Optional[str] = None  # teacher: backbone state_dict (insightface backbone.pth layout)


@dataclass
class HeadConfig:
    """The student's recognition head (``ekd.heads.create``)."""

    name: str = "arcface"  # softmax, normface, sphereface, cosface, arcface, combined
    kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {s: 64, m: 0.5}
    sharded: bool = False  # class centres split over ranks (partial-FC style)
    sample_rate: float = 1.0  # fraction of negative class centres sampled per step (sharded head)


@dataclass
class DistillConfig:
    """A method: one row of the comparison (conf/distill/<method>.yaml is one method file).

    ``objectives`` are the weighted distillation losses, ``{key: {weight: w, **hyper-parameters}}``
    (empty: the "no KD" row, recognition loss only); ``key`` is the registry name, or any name with
    ``objective: <registry name>`` inside (to use one objective twice). ``label``, ``order``,
    ``paper_row`` and ``demo`` say how the row appears in ``ekd-table`` (they are recorded in
    ``results.json``, so the table never needs the code that defined the method) and whether
    ``ekd-demo`` runs it by default. The other fields configure the DistillationModule (see it).
    """

    method: str = "none"  # the row's key: none, kd, rkd, ekd, kd_rkd, ...
    label: str = ""  # the row's name in tables ("" -> the method key)
    order: float = 1000.0  # rows are sorted by it (the EKD paper's Table 2 order for its methods)
    paper_row: Optional[str] = None  # the row of ekd/report/paper_tables.csv (table2) it reproduces
    demo: bool = False  # ekd-demo runs it when --methods is not given
    objectives: dict[str, Any] = field(default_factory=dict)
    teacher_centres: TeacherCentres = TeacherCentres.auto
    prototype_cache: Optional[str] = None
    # folder written by ``ekd-cache build`` (same teacher file and training set): the teacher's embeddings
    # are read from it instead of computed, unless an objective needs its stage feature maps
    teacher_cache: Optional[str] = None
    teacher_logit_scale: float = 64.0
    student_head_init: StudentHeadInit = StudentHeadInit.none
    save_teacher: bool = False

    def __post_init__(self) -> None:
        self.teacher_centres = parse_choice(TeacherCentres, self.teacher_centres, "teacher_centres")
        self.student_head_init = parse_choice(StudentHeadInit, self.student_head_init, "student_head_init")
        if not self.teacher_logit_scale > 0:
            raise ValueError(f"teacher_logit_scale must be > 0, got {self.teacher_logit_scale!r}")
        if not isinstance(self.objectives, Mapping):
            raise ValueError(
                f"objectives must map names to {{weight: ..., <hparams>}}, got {self.objectives!r}"
            )
