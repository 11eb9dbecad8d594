"""Feature mimic: squared L2 distance between normalised embeddings, a strong simple baseline.

    L = mean_i ||f^_s,i - f^_t,i||^2 = mean_i (2 - 2 cos(f_s,i, f_t,i)),   f^ = f / ||f||

Requires the student and teacher embeddings to have the same dimension (both 512-d in ekd's
settings). Zero when the student embedding is any positive multiple of the teacher's; invariant to
positive scaling of either. Recommended weight 1. Not relational.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ekd.distill.base import Objective, register_objective
from ekd.distill.common import check_batch, student_teacher_pair
from ekd.models.features import Features


@register_objective("mimic")
class MimicObjective(Objective):
    """Mean squared L2 distance between the L2-normalised student and teacher embeddings."""

    requires = frozenset({"embedding"})
    relational = False
    default_weight = 1.0

    def __init__(self, eps: float = 1e-12) -> None:
        super().__init__()
        self.eps = float(eps)

    def forward(self, student: Features, teacher: Features, labels: torch.Tensor) -> torch.Tensor:
        f_s, f_t = student_teacher_pair(self.name, "embedding", student.embedding, teacher.embedding)
        check_batch(self.name, "embedding", f_s)
        diff = F.normalize(f_s, dim=1, eps=self.eps) - F.normalize(f_t, dim=1, eps=self.eps)
        return diff.pow(2).sum(dim=1).mean()
