"""Base class and registry of distillation objectives.

An objective maps ``(student: Features, teacher: Features, labels)`` to a scalar loss. It declares
the Features fields it needs in ``requires`` (checked by the training module at start-up) and
whether it is ``relational`` (computed on the global batch gathered across ranks under DDP).
Objectives own their adapters (e.g. the FitNet regressor): those are ordinary submodules and so
trainable parameters of the student side.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ekd.models.features import Features

_REGISTRY: dict[str, type[Objective]] = {}


class Objective(nn.Module):
    """Base of every distillation objective (see the module docstring)."""

    name: str = ""
    requires: frozenset[str] = frozenset({"embedding"})
    relational: bool = False

    def forward(self, student: Features, teacher: Features, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

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


def create(name: str, **hparams) -> Objective:
    """Build the objective registered as ``name`` with its hyper-parameters (defaults otherwise)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown distillation objective {name!r}; known: {', '.join(list_objectives())}")
    return _REGISTRY[name](**hparams)
