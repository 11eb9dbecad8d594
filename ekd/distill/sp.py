"""SP: similarity-preserving distillation (Tung and Mori, ICCV 2019).

    F: B x d, one flattened feature vector per sample;  G = F F^T (B x B);
    G~ = G with each row L2-normalised (rows of norm < eps are divided by eps, i.e. stay ~0);
    L_SP = ||G~_t - G~_s||_F^2 / B^2.

Student and teacher may have different feature sizes (only the B x B matrices are compared).
Features: the raw embedding by default; ``stage="stage3"`` etc. uses that stage map (flattened).
Zero when the student equals the teacher; invariant to orthogonal transforms and positive scaling of
either model's features. Recommended weight (``default_weight``): 3000, the paper's / CRD's value.

Relational: the training module passes the global batch (``gather_global``), including the stage
map named in ``requires`` when ``stage`` is set.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ekd.distill.adapters import flatten
from ekd.distill.base import Objective, register_objective
from ekd.distill.common import check_batch, student_teacher_pair
from ekd.models.features import STAGE_NAMES, Features


def _normalised_gram(x: torch.Tensor, eps: float) -> torch.Tensor:
    return F.normalize(x @ x.t(), p=2, dim=1, eps=eps)


@register_objective("sp")
class SPObjective(Objective):
    """Squared Frobenius distance between row-normalised batch similarity matrices, over B^2."""

    requires = frozenset({"embedding"})
    relational = True
    default_weight = 3000.0

    def __init__(self, stage: str | None = None, eps: float = 1e-12) -> None:
        super().__init__()
        if stage is not None and stage not in STAGE_NAMES:
            raise ValueError(
                f"sp: unknown stage {stage!r}; expected None (embedding) or one of {list(STAGE_NAMES)}"
            )
        self.stage = stage
        self.eps = float(eps)
        if stage is not None:
            self.requires = frozenset({f"stages.{stage}"})

    def forward(self, student: Features, teacher: Features, labels: torch.Tensor) -> torch.Tensor:
        self.check_features(student, "student")
        self.check_features(teacher, "teacher")
        if self.stage is None:
            f_s, f_t = student.embedding, teacher.embedding
        else:
            f_s, f_t = student.stages[self.stage], teacher.stages[self.stage].detach()
        f_s, f_t = student_teacher_pair(self.name, "features", flatten(f_s), flatten(f_t), same_width=False)
        check_batch(self.name, "features", f_s)
        b = f_s.shape[0]
        with torch.no_grad():
            g_t = _normalised_gram(f_t, self.eps)
        return (g_t - _normalised_gram(f_s, self.eps)).pow(2).sum() / (b * b)

    def extra_repr(self) -> str:
        return f"stage={self.stage!r}"
