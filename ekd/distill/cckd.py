"""CCKD: correlation congruence knowledge distillation (Peng et al., ICCV 2019).

On L2-normalised embeddings the Gaussian RBF kernel is exp(-gamma ||x - y||^2) = e^{-2 gamma}
e^{2 gamma x.y}; CCKD uses its P-order Taylor expansion
    k(x, y) = sum_{p=0..P} e^{-2 gamma} (2 gamma)^p / p! (x.y)^p          (gamma = 0.4, P = 2)
to build each model's B x B correlation matrix C_ij = k(x_i, x_j), and
    L_CC = (1 / B^2) sum_{i,j} (C^s_ij - C^t_ij)^2,
the mean over all B^2 entries (diagonal included; both diagonals equal sum_p e^{-2 gamma}(2 gamma)^p/p!,
so it contributes 0). Student and teacher embedding sizes may differ. Zero when the student's
embeddings equal the teacher's up to positive per-sample scales. Recommended weight 1.
Relational: global batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ekd.distill.base import Objective, register_objective
from ekd.distill.common import check_batch, student_teacher_pair
from ekd.models.features import Features


@register_objective("cckd")
class CCKDObjective(Objective):
    """MSE between Taylor-expanded Gaussian-RBF correlation matrices of student and teacher."""

    requires = frozenset({"embedding"})
    relational = True
    default_weight = 1.0

    def __init__(self, gamma: float = 0.4, order: int = 2, eps: float = 1e-12) -> None:
        super().__init__()
        if not gamma > 0:
            raise ValueError(f"cckd: gamma must be > 0, got {gamma}")
        if int(order) < 0:
            raise ValueError(f"cckd: order (P) must be >= 0, got {order}")
        self.gamma = float(gamma)
        self.order = int(order)
        self.eps = float(eps)
        self.coefficients = [
            math.exp(-2.0 * self.gamma) * (2.0 * self.gamma) ** p / math.factorial(p)
            for p in range(self.order + 1)
        ]

    def correlation(self, x: torch.Tensor) -> torch.Tensor:
        """B x B Taylor-expanded RBF kernel matrix of the normalised rows of ``x``."""
        unit = F.normalize(x, dim=1, eps=self.eps)
        cos = unit @ unit.t()
        result = torch.full_like(cos, self.coefficients[0])
        power = torch.ones_like(cos)
        for coefficient in self.coefficients[1:]:
            power = power * cos
            result = result + coefficient * power
        return result

    def forward(self, student: Features, teacher: Features, labels: torch.Tensor) -> torch.Tensor:
        f_s, f_t = student_teacher_pair(
            self.name, "embedding", student.embedding, teacher.embedding, same_width=False
        )
        check_batch(self.name, "embedding", f_s)
        with torch.no_grad():
            c_t = self.correlation(f_t)
        return (self.correlation(f_s) - c_t).pow(2).mean()

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, order={self.order}"
