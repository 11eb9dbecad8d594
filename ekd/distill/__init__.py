"""Distillation objectives: ``create(name, **hparams)`` and ``list_objectives()``.

Each objective lives in its own module (one family per file) and registers itself on import.
"""

from ekd.distill.base import Objective, create, gather_global, list_objectives, register_objective

__all__ = ["Objective", "create", "gather_global", "list_objectives", "register_objective"]
