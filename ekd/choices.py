"""Every closed choice of ekd, declared once.

The typed config schema (:mod:`ekd.config.schema`) uses these enums, so a wrong value fails when Hydra
composes the config; the parts that consume them (samplers, training modules, optimisers) check their
arguments with :func:`parse_choice`, so the Python API refuses the same values with the same list.
Open sets that users extend (backbones, heads, objectives, data sources) are registries instead
(:mod:`ekd.registry`).

The enums subclass ``str``: ``Sampler.ekd == "ekd"``, and ``parse_choice`` accepts either spelling.
"""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

E = TypeVar("E", bound=Enum)


class Sampler(str, Enum):
    """Batch composition: uniform, EKD's general + identity-balanced parts, or P identities x K images."""

    random = "random"
    ekd = "ekd"
    pk = "pk"


class Nonfinite(str, Enum):
    """What a training module does with a non-finite loss: stop the run, or skip the step."""

    stop = "stop"
    skip = "skip"


class TeacherCentres(str, Enum):
    """Where the teacher's class centres come from: its checkpoint's head, class prototypes, or either."""

    auto = "auto"
    head = "head"
    prototypes = "prototypes"


class StudentHeadInit(str, Enum):
    """How the student's head starts: its own random init, or a copy of the teacher centres (frozen)."""

    none = "none"
    teacher_centres = "teacher_centres"
    freeze_teacher_centres = "freeze_teacher_centres"


class OptimName(str, Enum):
    sgd = "sgd"
    adamw = "adamw"


class ScheduleName(str, Enum):
    step = "step"
    poly = "poly"
    cosine = "cosine"
    constant = "constant"


class IJBProtocolName(str, Enum):
    """Named IJB-B/C 1:1 scoring presets (``ekd.eval.ijb.IJB_PROTOCOLS``; docs/methods.md)."""

    insightface = "insightface"
    tface = "tface"


class FlipMode(str, Enum):
    """How an IJB image feature is made from the embeddings of the image and of its mirror
    (``ekd.eval.ijb.fuse_views``; docs/methods.md)."""

    sum = "sum"
    plain = "plain"
    sum_normalised = "sum_normalised"
    concat_normalised = "concat_normalised"


class EvalPrecision(str, Enum):
    """Arithmetic of evaluation embeddings: fp32, or autocast to fp16 / bf16 (Lightning's spellings).

    The member names are what OmegaConf would match, so the config keeps the value as a string
    (``eval.precision: 32-true``) and :func:`parse_choice` checks it by value.
    """

    fp32 = "32-true"
    fp16 = "16-mixed"
    bf16 = "bf16-mixed"


def parse_choice(enum: type[E], value: object, key: str, what: str = "value") -> E:
    """``enum`` member named by ``value`` (a member or its string); ValueError naming ``key`` otherwise."""
    if isinstance(value, enum):
        return value
    try:
        return enum(value)
    except ValueError:
        known = ", ".join(member.value for member in enum)
        raise ValueError(f"{key}: unknown {what} {value!r}; expected one of {known}") from None


def choice_value(value: object) -> object:
    """The plain value of an enum member (anything else unchanged): what checkpoints and JSON store."""
    return value.value if isinstance(value, Enum) else value
