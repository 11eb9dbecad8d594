"""SP: similarity-preserving distillation (Tung and Mori, ICCV 2019), in two variants.

F: B x d, one flattened feature vector per sample; both variants compare B x B matrices,
    L_SP = ||M_t - M_s||_F^2 / B^2,
and differ in M:

- ``variant="paper"`` (default; the SP paper, RepDistiller / the CRD benchmark): M = G~, the Gram
  matrix G = F F^T with each row L2-normalised (rows of norm < eps are divided by eps, i.e. stay ~0).
  Invariant to orthogonal transforms and to one positive scale of all of a model's features.
- ``variant="tface"`` (the code behind the EKD paper's Table 2: Tencent/TFace
  ``recognition/tasks/ekd/distillation/similarity_perserving.py``, ``SimPerserving``): M = F^ F^T,
  the cosine-similarity matrix of the L2-normalised rows F^ = F / max(||F_i||, eps). Its entries are
  cosines in [-1, 1] (the paper's are about 1/sqrt(B) in size), and it is invariant to a positive
  scale per sample as well.

Student and teacher may have different feature sizes (only the B x B matrices are compared).
Features: the raw embedding by default; ``stage="stage3"`` etc. uses that stage map (flattened).
Zero when the student equals the teacher. Recommended weight (``default_weight``): 3000, the SP
paper's / CRD's value for the paper variant (TFace gives no weight for SP; docs/methods.md).

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

VARIANTS = ("paper", "tface")


def _normalised_gram(x: torch.Tensor, eps: float) -> torch.Tensor:
    return F.normalize(x @ x.t(), p=2, dim=1, eps=eps)


def _cosine_matrix(x: torch.Tensor, eps: float) -> torch.Tensor:
    unit = F.normalize(x, p=2, dim=1, eps=eps)
    return unit @ unit.t()


@register_objective("sp")
class SPObjective(Objective):
    """Squared Frobenius distance between batch similarity matrices, over B^2 (variant: module doc)."""

    requires = frozenset({"embedding"})
    relational = True
    default_weight = 3000.0

    def __init__(self, variant: str = "paper", stage: str | None = None, eps: float = 1e-12) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"sp: unknown variant {variant!r}; expected one of {list(VARIANTS)}")
        if stage is not None and stage not in STAGE_NAMES:
            raise ValueError(
                f"sp: unknown stage {stage!r}; expected None (embedding) or one of {list(STAGE_NAMES)}"
            )
        self.variant = variant
        self.stage = stage
        self.eps = float(eps)
        self._similarity = _normalised_gram if variant == "paper" else _cosine_matrix
        if stage is not None:
            self.requires = frozenset({f"stages.{stage}"})

    def similarity(self, x: torch.Tensor) -> torch.Tensor:
        """The B x B matrix M of the rows of ``x`` (flattened) that this variant compares."""
        return self._similarity(flatten(x), self.eps)

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
            m_t = self.similarity(f_t)
        return (m_t - self.similarity(f_s)).pow(2).sum() / (b * b)

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}, stage={self.stage!r}"
