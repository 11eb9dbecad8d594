"""MarginDistillation (Svitov and Alyamkin, "MarginDistillation: distillation for margin-based
softmax", 2020).

The student is classified against the teacher's class centres W (C x D, L2-normalised, frozen; set
once by the training module through ``set_teacher_centres``) with an ArcFace margin that the teacher
sets per sample:
    c_i = cos(f^_t,i, W^_{y_i})  (how well the teacher places sample i near its class centre),
    m_i = clamp(M_min + (M_max - M_min) c_i / max_j c_j, M_min, M_max),    max over the batch,
    logits_ij = s cos(theta_ij + m_i) for j = y_i and s cos(theta_ij) otherwise, theta_ij = angle(f_s,i, W_j),
    L = cross-entropy(logits, y), mean over the batch;     s = 64, M_min = 0.2, M_max = 0.5.
Samples the teacher finds easy get a margin close to M_max, hard ones close to M_min. Reading of the
reference text: the clamp applies to the margin m_i (it keeps m_i inside [M_min, M_max] when some c_i
are negative); max_j c_j is floored at a small positive value, so a batch whose c are all <= 0 gets
M_min everywhere. The margins come from the teacher only (no gradient). Where theta + m_i > pi the
target logit is no longer monotonic in theta: as in ArcFace, cos(theta + m) is used while
cos(theta) > cos(pi - m) and cos(theta) - m sin(pi - m) otherwise (the rule of ekd's default ArcFace, TFace's
head and insightface before 2022-12; per sample).

The objective computes the student's logits itself from ``student.embedding`` and the frozen centres
(requires = embedding), so it is independent of the student's own head; in the paper it replaces the
recognition loss (give the recognition term weight 0 in the config) but it can be combined with it.
The centres are a non-persistent buffer: the training module sets them at start-up (and on resume).
Recommended weight 1. Not relational: per-sample (the batch maximum is the local batch's).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ekd.distill.base import Objective, register_objective
from ekd.distill.common import check_batch, check_labels, compute_dtype
from ekd.heads import arcface_target
from ekd.models.features import Features


@register_objective("margin")
class MarginDistillationObjective(Objective):
    """Cross-entropy of the student against frozen teacher centres with teacher-set ArcFace margins."""

    requires = frozenset({"embedding"})
    relational = False
    needs_teacher_centres = True
    default_weight = 1.0

    def __init__(
        self, scale: float = 64.0, margin_min: float = 0.2, margin_max: float = 0.5, eps: float = 1e-12
    ) -> None:
        super().__init__()
        if not scale > 0:
            raise ValueError(f"margin: scale must be > 0, got {scale}")
        if not 0 <= margin_min <= margin_max < math.pi / 2:
            raise ValueError(
                f"margin: need 0 <= margin_min <= margin_max < pi/2, got margin_min={margin_min}, "
                f"margin_max={margin_max}"
            )
        self.scale = float(scale)
        self.margin_min = float(margin_min)
        self.margin_max = float(margin_max)
        self.eps = float(eps)
        self.register_buffer("centres", torch.empty(0, 0), persistent=False)
        self._last: dict[str, torch.Tensor] = {}

    def set_teacher_centres(self, centres: torch.Tensor) -> None:
        """Store the teacher's class centres (C x D), normalised and frozen."""
        if centres.ndim != 2 or centres.shape[0] < 1 or centres.shape[1] < 1:
            raise ValueError(f"margin: teacher centres must be C x D, got shape {tuple(centres.shape)}")
        if not bool(torch.isfinite(centres).all()):
            raise ValueError("margin: teacher centres contain NaN or infinite values")
        norms = centres.norm(dim=1)
        if bool((norms <= self.eps).any()):
            zero = (norms <= self.eps).nonzero().flatten()[:10].tolist()
            raise ValueError(f"margin: teacher centres of classes {zero} are zero vectors")
        self.centres = F.normalize(compute_dtype(centres.detach()), dim=1).to(self.centres.device)

    def sample_margins(self, teacher_embedding: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """m_i for each sample (no gradient); see the module docstring."""
        with torch.no_grad():
            centres = self.centres.to(teacher_embedding.dtype)
            c = (F.normalize(teacher_embedding, dim=1, eps=self.eps) * centres[labels]).sum(dim=1)
            ratio = c / c.max().clamp_min(self.eps)
            margins = self.margin_min + (self.margin_max - self.margin_min) * ratio
            return margins.clamp(self.margin_min, self.margin_max)

    def forward(self, student: Features, teacher: Features, labels: torch.Tensor) -> torch.Tensor:
        if self.centres.numel() == 0:
            raise RuntimeError(
                "margin: teacher class centres are not set; call set_teacher_centres(C x D) before training"
            )
        f_s = compute_dtype(student.embedding)
        f_t = teacher.embedding.detach().to(f_s.dtype)
        check_batch(self.name, "embedding", f_s, labels)
        num_classes, dim = self.centres.shape
        if f_s.shape[1] != dim or f_t.shape != f_s.shape:
            raise ValueError(
                f"margin: embeddings must be N x {dim} like the teacher centres, got student "
                f"{tuple(f_s.shape)} and teacher {tuple(f_t.shape)}"
            )
        labels = labels.long()
        check_labels(self.name, labels, num_classes)
        margins = self.sample_margins(f_t, labels).unsqueeze(1)  # N x 1
        cos = F.normalize(f_s, dim=1, eps=self.eps) @ self.centres.to(f_s.dtype).t()  # N x C
        target = arcface_target(cos.gather(1, labels.unsqueeze(1)), margins)
        logits = cos.scatter(1, labels.unsqueeze(1), target) * self.scale
        self._last = {"margin_mean": margins.mean().detach()}
        return F.cross_entropy(logits, labels)

    def log_items(self) -> dict[str, torch.Tensor]:
        """Mean per-sample margin of the last forward."""
        return dict(self._last)

    def extra_repr(self) -> str:
        return (
            f"scale={self.scale}, margin_min={self.margin_min}, margin_max={self.margin_max}, "
            f"classes={self.centres.shape[0]}"
        )
