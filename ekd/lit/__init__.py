"""Lightning training modules (RecognitionModule, DistillationModule), optimisers and lr schedules."""

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

__all__ = [
    "DistillationModule",
    "NonFiniteLossError",
    "OptimConfig",
    "RecognitionModule",
    "ScheduleConfig",
    "build_optimizer",
    "build_scheduler",
    "load_class_centres",
    "lr_factor",
    "param_groups",
]
