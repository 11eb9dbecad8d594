"""KD: soft-target distillation of class probabilities (Hinton, Vinyals and Dean, 2015).

    L_KD = T^2 * mean_i sum_c p_t(c|i) (log p_t(c|i) - log p_s(c|i)),   p = softmax(z / T)

i.e. T^2 KL(softmax(z_t / T) || softmax(z_s / T)), summed over classes and averaged over the batch;
the T^2 factor keeps the gradient scale independent of T. Default T = 4; recommended weight 1.

Face recognition trains separate heads for teacher and student, so their logits are not comparable
as such: the training module fills ``teacher.logits`` with margin-free logits s cos(f^_t, W^) against
the teacher's class centres (its head weights, or the teacher class prototypes of
``ekd.distill.prototypes``) and ``student.logits`` from the student head (margin-free as well), both
over the same C classes. Not relational: per-sample, so each rank computes it on its own rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ekd.distill.base import Objective, register_objective
from ekd.distill.common import student_teacher_pair
from ekd.models.features import Features


@register_objective("kd")
class KDObjective(Objective):
    """T^2-scaled KL divergence between temperature-softened teacher and student class distributions."""

    requires = frozenset({"logits"})
    relational = False
    default_weight = 1.0

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"kd: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, student: Features, teacher: Features, labels: torch.Tensor) -> torch.Tensor:
        self.check_features(student, "student")
        self.check_features(teacher, "teacher")
        z_s, z_t = student_teacher_pair(self.name, "logits", student.logits, teacher.logits)
        if z_s.ndim != 2:
            raise ValueError(f"kd: logits must be N x C, got shape {tuple(z_s.shape)}")
        t = self.temperature
        log_p_s = F.log_softmax(z_s / t, dim=1)
        log_p_t = F.log_softmax(z_t / t, dim=1)
        # p_t log p_t is computed from log-probabilities, so classes with p_t -> 0 contribute exactly 0
        kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
        return t * t * kl.mean()

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
