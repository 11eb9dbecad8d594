"""ShrinkTeaNet angular distillation (Duong et al., "ShrinkTeaNet: Million-scale Lightweight Face
Recognition via Shrinking Teacher-Student Networks", 2019).

    L = mean_i (1 - cos(f_s,i, f_t,i))  +  sum_{k in stages} mean_i (1 - cos(vec r_k(F_s,i^k), vec F_t,i^k))

The first term compares the embeddings; with ``stages=[...]`` (default: none) each listed stage map is
flattened per sample and compared the same way, after a 1x1 conv + BN regressor when the channel
counts differ (pass ``student_shapes`` / ``teacher_shapes`` = the backbones' ``stage_shapes``) and
adaptive average pooling of the larger map when the spatial sizes differ (``ekd.distill.adapters``).
The per-level terms are summed, each a batch mean. Only directions matter: zero when the student
equals the teacher up to a positive scale, invariant to positive scaling of either side.
Recommended weight 1. Not relational.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ekd.distill.adapters import Shapes, align_maps, build_regressor, flatten, parse_shapes
from ekd.distill.base import Objective, register_objective
from ekd.distill.common import check_batch, student_teacher_pair
from ekd.models.features import STAGE_NAMES, Features


def _one_minus_cosine(a: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    # <a / max(|a|, eps), b / max(|b|, eps)> (F.normalize's convention) from one row-wise dot product and
    # two norms: no normalised copies of the (up to N x 25088) rows in the forward or backward pass
    norm_a = torch.linalg.vector_norm(a, dim=1).clamp_min(eps)
    norm_b = torch.linalg.vector_norm(b, dim=1).clamp_min(eps)
    return (1.0 - torch.linalg.vecdot(a, b, dim=1) / (norm_a * norm_b)).mean()


@register_objective("shrinkteanet")
class AngularObjective(Objective):
    """Mean (1 - cosine) between student and teacher embeddings (and optionally stage maps)."""

    relational = False
    default_weight = 1.0

    def __init__(
        self,
        stages: Sequence[str] = (),
        student_shapes: Shapes | None = None,
        teacher_shapes: Shapes | None = None,
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        stages = [str(s) for s in stages]
        unknown = [s for s in stages if s not in STAGE_NAMES]
        if unknown:
            raise ValueError(
                f"shrinkteanet: unknown stages {unknown}; expected names from {list(STAGE_NAMES)}"
            )
        if len(set(stages)) != len(stages):
            raise ValueError(f"shrinkteanet: stages listed twice in {stages}")
        self.stages = stages
        self.eps = float(eps)
        self.requires = frozenset({"embedding", *(f"stages.{s}" for s in stages)})
        s_shapes = parse_shapes("shrinkteanet", "student", student_shapes)
        t_shapes = parse_shapes("shrinkteanet", "teacher", teacher_shapes)
        regressors = {s: build_regressor("shrinkteanet", s, s_shapes, t_shapes) for s in stages}
        self.regressors = nn.ModuleDict({s: r for s, r in regressors.items() if r is not None})
        self._last: dict[str, torch.Tensor] = {}

    def forward(self, student: Features, teacher: Features, labels: torch.Tensor) -> torch.Tensor:
        self.check_features(student, "student")
        self.check_features(teacher, "teacher")
        f_s, f_t = student_teacher_pair(self.name, "embedding", student.embedding, teacher.embedding)
        check_batch(self.name, "embedding", f_s)
        loss = _one_minus_cosine(f_s, f_t, self.eps)
        self._last = {"embedding": loss.detach()}
        for stage in self.stages:
            # nn.ModuleDict has no get()
            regressor = self.regressors[stage] if stage in self.regressors else None  # noqa: SIM401
            m_s, m_t = align_maps(self.name, stage, student.stages[stage], teacher.stages[stage], regressor)
            term = _one_minus_cosine(flatten(m_s), flatten(m_t), self.eps)
            self._last[stage] = term.detach()
            loss = loss + term
        return loss

    def log_items(self) -> dict[str, torch.Tensor]:
        """Per-level terms of the last forward (only when stage terms are used)."""
        return dict(self._last) if self.stages else {}

    def extra_repr(self) -> str:
        return f"stages={self.stages}"
