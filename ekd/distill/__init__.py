"""Distillation objectives: ``create(name, **hparams)`` and ``list_objectives()`` over ``OBJECTIVES``.

Each objective lives in its own module (one family per file) and registers itself on import; the
modules are imported here for that side effect, so ``import ekd.distill`` makes every name available.
"""

from ekd.distill import adadistill as _adadistill  # noqa: F401
from ekd.distill import angular as _angular  # noqa: F401
from ekd.distill import cckd as _cckd  # noqa: F401
from ekd.distill import darkrank as _darkrank  # noqa: F401
from ekd.distill import ekd as _ekd  # noqa: F401
from ekd.distill import fitnet as _fitnet  # noqa: F401
from ekd.distill import kd as _kd  # noqa: F401
from ekd.distill import margin as _margin  # noqa: F401
from ekd.distill import mimic as _mimic  # noqa: F401
from ekd.distill import rkd as _rkd  # noqa: F401
from ekd.distill import sp as _sp  # noqa: F401
from ekd.distill import triplet as _triplet  # noqa: F401
from ekd.distill.base import (
    OBJECTIVES,
    Objective,
    ObjectiveContext,
    create,
    gather_global,
    list_objectives,
    objective_class,
    register_objective,
)

__all__ = [
    "OBJECTIVES",
    "Objective",
    "ObjectiveContext",
    "create",
    "gather_global",
    "list_objectives",
    "objective_class",
    "register_objective",
]
