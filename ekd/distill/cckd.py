"""CCKD: correlation congruence knowledge distillation (Peng et al., ICCV 2019), in two variants.

On L2-normalised embeddings the Gaussian RBF kernel is exp(-gamma ||x - y||^2) = e^{-2 gamma}
e^{2 gamma x.y}; CCKD replaces it by a truncated Taylor series
    k(x, y) = sum_{p in orders} e^{-2 gamma} (2 gamma)^p / p! (x.y)^p,
builds each model's B x B correlation matrix C_ij = k(x_i, x_j), and takes
    L_CC = (1 / B^2) sum_{i,j} (C^s_ij - C^t_ij)^2,
the mean over all B^2 entries (diagonal included; both diagonals equal sum_p e^{-2 gamma}(2 gamma)^p/p!,
so it contributes 0). The variants differ only in which orders are summed, i.e. in what ``order``
means:

- ``variant="paper"`` (default; the CCKD paper's P-order expansion): orders 0..P with P = ``order``
  (gamma = 0.4, P = 2 by default: TFace's defaults, its p read as the paper's P). RepDistiller's
  ``Correlation`` (the CRD benchmark's "CC") is a different loss and is not implemented here.
- ``variant="tface"`` (the code behind the EKD paper's Table 2: Tencent/TFace
  ``recognition/tasks/ekd/distillation/cc.py``, ``CC(gamma=0.4, p=2)``): ``order`` is TFace's ``p``
  and the orders are ``range(p)`` = 0..p-1, so ``order`` must be >= 1. With TFace's p = 2 the kernel
  is e^{-2 gamma} (1 + 2 gamma x.y) and L_CC = (2 gamma e^{-2 gamma})^2 mean_ij (cos^s_ij -
  cos^t_ij)^2, i.e. (0.8 e^{-0.8})^2 ~ 0.129 times the ``tface`` SP loss. ``variant="tface",
  order=P + 1`` equals ``variant="paper", order=P``.

Student and teacher embedding sizes may differ. Zero when the student's embeddings equal the
teacher's up to positive per-sample scales. Recommended weight 1. Relational: global batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ekd.distill.base import Objective, register_objective
from ekd.distill.common import check_batch, student_teacher_pair
from ekd.models.features import Features

VARIANTS = ("paper", "tface")


@register_objective("cckd")
class CCKDObjective(Objective):
    """MSE between Taylor-expanded Gaussian-RBF correlation matrices of student and teacher."""

    requires = frozenset({"embedding"})
    relational = True
    default_weight = 1.0

    def __init__(
        self, gamma: float = 0.4, order: int = 2, variant: str = "paper", eps: float = 1e-12
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"cckd: unknown variant {variant!r}; expected one of {list(VARIANTS)}")
        if not gamma > 0:
            raise ValueError(f"cckd: gamma must be > 0, got {gamma}")
        if variant == "paper" and int(order) < 0:
            raise ValueError(f"cckd: order (P, orders 0..P) must be >= 0, got {order}")
        if variant == "tface" and int(order) < 1:
            # range(0) is empty: TFace's correlation matrix would be 0 and the loss identically 0
            raise ValueError(
                f"cckd: with variant='tface', order (TFace's p, orders 0..p-1) must be >= 1, got {order}"
            )
        self.variant = variant
        self.gamma = float(gamma)
        self.order = int(order)
        self.eps = float(eps)
        top = self.order if variant == "paper" else self.order - 1  # the highest order summed
        self.coefficients = [
            math.exp(-2.0 * self.gamma) * (2.0 * self.gamma) ** p / math.factorial(p) for p in range(top + 1)
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
        return f"variant={self.variant!r}, gamma={self.gamma}, order={self.order}"
