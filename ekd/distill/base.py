"""Base class and registry of distillation objectives.

An objective maps ``(student: Features, teacher: Features, labels)`` to a scalar loss. It declares
the Features fields it needs in ``requires`` (checked by the training module at start-up) and
whether it is ``relational`` (computed on the global batch gathered across ranks under DDP).
Objectives own their adapters (e.g. the FitNet regressor): those are ordinary submodules and so
trainable parameters of the student side.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from ekd import dist
from ekd.models.features import Features

_REGISTRY: dict[str, type[Objective]] = {}


class Objective(nn.Module):
    """Base of every distillation objective (see the module docstring)."""

    name: str = ""
    requires: frozenset[str] = frozenset({"embedding"})
    relational: bool = False
    # True for objectives that need the teacher's class centres (C x D), e.g. MarginDistillation;
    # the training module calls ``set_teacher_centres`` once before training.
    needs_teacher_centres: bool = False

    def set_teacher_centres(self, centres: torch.Tensor) -> None:
        raise TypeError(f"distillation objective {self.name!r} does not use teacher class centres")

    def forward(self, student: Features, teacher: Features, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def required_stages(self) -> list[str]:
        """Names of the stage maps listed in ``requires`` (what ``gather_global`` must gather)."""
        return sorted(r.split(".", 1)[1] for r in self.requires if r.startswith("stages."))

    def log_items(self) -> dict[str, torch.Tensor]:
        """Extra values to log after the last forward (e.g. EKD thresholds); none by default."""
        return {}

    def check_features(self, features: Features, side: str) -> None:
        """Raise a configuration error when ``features`` lacks a field this objective needs."""
        missing = sorted(r for r in self.requires if not features.has(r))
        if missing:
            raise ValueError(
                f"distillation objective {self.name!r} needs {missing} from the {side}, which does not "
                f"provide them (it provides embedding, logits={features.logits is not None}, "
                f"stages={sorted(features.stages)})"
            )


def gather_global(
    student: Features,
    teacher: Features,
    labels: torch.Tensor,
    layout: list[int] | None = None,
    stages: Iterable[str] = (),
) -> tuple[Features, Features, torch.Tensor]:
    """The global batch for relational objectives under DDP (identity on one process).

    Student embeddings and logits are gathered with gradients flowing back to the local rows (see
    ``ekd.dist`` for the gradient scale), teacher tensors and labels without. Stage maps are not
    gathered. ``layout`` splits the local rows into consecutive parts (e.g. ``[32, 32]`` for EKD's
    general + balanced images); each part is gathered separately and the result is part-major:
    [part 0 of every rank, part 1 of every rank, ...], the order of the official EKD code.
    """
    if not dist.is_distributed():
        return student, teacher, labels
    layout = layout or [labels.shape[0]]
    if sum(layout) != labels.shape[0]:
        raise ValueError(f"batch layout {layout} does not add up to the batch size {labels.shape[0]}")

    def gather(tensor: torch.Tensor | None, with_grad: bool) -> torch.Tensor | None:
        if tensor is None:
            return None
        fn = dist.gather_with_grad if with_grad else dist.gather_nograd
        return torch.cat([fn(part) for part in torch.split(tensor, layout)], dim=0)

    stages = list(stages)
    student_global = Features(
        embedding=gather(student.embedding, True),
        stages={name: gather(student.stages[name], True) for name in stages},
        logits=gather(student.logits, True),
    )
    teacher_global = Features(
        embedding=gather(teacher.embedding, False),
        stages={name: gather(teacher.stages[name], False) for name in stages},
        logits=gather(teacher.logits, False),
    )
    return student_global, teacher_global, gather(labels, False)


def register_objective(name: str) -> Callable[[type[Objective]], type[Objective]]:
    """Class decorator adding an objective to the registry under ``name``."""

    def decorator(cls: type[Objective]) -> type[Objective]:
        if name in _REGISTRY:
            raise ValueError(f"distillation objective {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def list_objectives() -> list[str]:
    """Names accepted by :func:`create`, sorted."""
    return sorted(_REGISTRY)


def objective_class(name: str) -> type[Objective]:
    """The class registered as ``name`` (e.g. to inspect its constructor's defaults)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown distillation objective {name!r}; known: {', '.join(list_objectives())}")
    return _REGISTRY[name]


def create(name: str, **hparams) -> Objective:
    """Build the objective registered as ``name`` with its hyper-parameters (defaults otherwise)."""
    return objective_class(name)(**hparams)
