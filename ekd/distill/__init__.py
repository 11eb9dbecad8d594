"""Distillation objectives: ``create(name, **hparams)`` and ``list_objectives()``.

Each objective lives in its own module (one family per file) and registers itself on import.
"""

from ekd.distill import angular as _angular
from ekd.distill import cckd as _cckd
from ekd.distill import darkrank as _darkrank
from ekd.distill import ekd as _ekd
from ekd.distill import fitnet as _fitnet
from ekd.distill import kd as _kd
from ekd.distill import margin as _margin
from ekd.distill import mimic as _mimic
from ekd.distill import rkd as _rkd
from ekd.distill import sp as _sp
from ekd.distill import triplet as _triplet
from ekd.distill.base import Objective, create, gather_global, list_objectives, register_objective

__all__ = ["Objective", "create", "gather_global", "list_objectives", "register_objective"]
