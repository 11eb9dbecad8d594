"""Lightning training modules (RecognitionModule, DistillationModule), optimisers and lr schedules."""

from ekd.lit.build import build_module, module_class
from ekd.lit.distillation import DistillationModule
from ekd.lit.optim import (
    OptimConfig,
    ScheduleConfig,
    build_optimizer,
    build_scheduler,
    lr_factor,
    param_groups,
)
from ekd.lit.recognition import NonFiniteLossError, RecognitionModule, load_class_centres
from ekd.lit.sections import BackboneConfig, DistillConfig, HeadConfig

__all__ = [
    "BackboneConfig",
    "DistillConfig",
    "DistillationModule",
    "HeadConfig",
    "NonFiniteLossError",
    "OptimConfig",
    "RecognitionModule",
    "ScheduleConfig",
    "build_module",
    "build_optimizer",
    "build_scheduler",
    "load_class_centres",
    "lr_factor",
    "module_class",
    "param_groups",
]
