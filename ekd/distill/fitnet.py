"""FitNet: hint-based distillation of an intermediate feature map (Romero et al., ICLR 2015).

    L_hint = mean over N x C_t x H x W of (r(F_s) - F_t)^2

F_s, F_t: the student's and teacher's maps of one stage (``stage``, default "stage4": 512 x 7 x 7 for
both iresnet and MobileFaceNet, so no regressor is needed there). r = BN(Conv1x1(C_s -> C_t)) is a
learned regressor owned by this objective, built only when the channel counts differ; it needs the
channel counts before training, so pass the backbones' ``stage_shapes`` as ``student_shapes`` and
``teacher_shapes`` (a channel mismatch without them is a clear error at the first step). A spatial
mismatch is resolved by adaptive average pooling of the larger map (see ``ekd.distill.adapters``).

Recommended weight (``default_weight``): 100, the value used for FitNet hints in generic KD codebases
(e.g. the CRD benchmark) with an element-wise mean MSE; stage-4 activations of face backbones are
O(1), which puts the weighted hint at the scale of the recognition loss.

Two-stage recipe: the original FitNet first trains the student up to the hint layer with the hint
loss alone, then trains the whole student with the task (+ KD) loss. ``warmup_steps`` reproduces
the first stage: ``hint_only(step)`` is True for the first ``warmup_steps`` optimiser steps, and the
training module then optimises this hint term alone (it drops the recognition loss and every other
objective); 0 (the default) disables the warm-up. Not relational: per-sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ekd.distill.adapters import Shapes, align_maps, build_regressor, parse_shapes
from ekd.distill.base import Objective, register_objective
from ekd.models.features import STAGE_NAMES, Features


@register_objective("fitnet")
class FitNetObjective(Objective):
    """MSE between the (regressed) student hint map and the teacher's map of the same stage."""

    relational = False
    default_weight = 100.0

    def __init__(
        self,
        stage: str = "stage4",
        warmup_steps: int = 0,
        student_shapes: Shapes | None = None,
        teacher_shapes: Shapes | None = None,
    ) -> None:
        super().__init__()
        if stage not in STAGE_NAMES:
            raise ValueError(f"fitnet: unknown stage {stage!r}; expected one of {list(STAGE_NAMES)}")
        if int(warmup_steps) < 0:
            raise ValueError(f"fitnet: warmup_steps must be >= 0, got {warmup_steps}")
        self.stage = stage
        self.warmup_steps = int(warmup_steps)
        # an instance attribute: the needed field depends on the chosen stage
        self.requires = frozenset({f"stages.{stage}"})
        self.regressor = build_regressor(
            "fitnet",
            stage,
            parse_shapes("fitnet", "student", student_shapes),
            parse_shapes("fitnet", "teacher", teacher_shapes),
        )

    def hint_only(self, step: int) -> bool:
        """True while ``step`` (0-based optimiser step) is inside the hint-only warm-up."""
        return step < self.warmup_steps

    def forward(self, student: Features, teacher: Features, labels: torch.Tensor) -> torch.Tensor:
        self.check_features(student, "student")
        self.check_features(teacher, "teacher")
        f_s, f_t = align_maps(
            self.name, self.stage, student.stages[self.stage], teacher.stages[self.stage], self.regressor
        )
        # one fused kernel each way (the sub / pow / mean chain allocates two more N x C x H x W maps)
        return F.mse_loss(f_s, f_t)

    def extra_repr(self) -> str:
        return f"stage={self.stage!r}, warmup_steps={self.warmup_steps}"
