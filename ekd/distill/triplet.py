"""Triplet distillation (Feng et al., "Triplet Distillation for Deep Face Recognition", 2019).

FaceNet's triplet loss on the student's L2-normalised embeddings, with a margin set per triplet by
the teacher:
    D(a, b) = ||f^_a - f^_b||^2 (squared L2 of normalised embeddings, each model its own),
    d = max(D_t(a, n) - D_t(a, p), 0),  d_max = max of d over the batch's triplets,
    m = m_min + (m_max - m_min) d / d_max      (m = m_min for every triplet when d_max = 0),
    L = mean over the mined triplets of max(D_s(a, p) - D_s(a, n) + m, 0);
m_min = 0.2, m_max = 0.5. Triplets the teacher separates well get a larger margin.

Mining (``mining``) inside the (global) batch, from the labels; the batch needs several images per
identity (an identity-balanced sampler):
- ``"all"`` (default): every valid triplet (a, p, n), a != p, y_a = y_p, y_n != y_a, all weighted
  equally (the mean includes the triplets already satisfied). Deterministic, and the teacher's margin
  acts on every triplet. Memory: (number of positive pairs) x B, e.g. 1536 x 512 at B = 512 with 4
  images per identity.
- ``"batch_hard"``: per anchor, the hardest positive (largest D_s(a, p)) and hardest negative (smallest
  D_s(a, n)) of the student (Hermans et al., 2017); one triplet per anchor that has both; d_max over
  those triplets.
A batch without any valid triplet (no positive pair or no negative) gives a zero loss (still attached
to the graph) and a warning, once per process. Recommended weight 1. Relational: global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ekd.distill.base import Objective, register_objective
from ekd.distill.common import check_batch, student_teacher_pair, warn_once, zero_loss
from ekd.models.features import Features


def _normalised_squared_distances(x: torch.Tensor, eps: float) -> torch.Tensor:
    unit = F.normalize(x, dim=1, eps=eps)
    return (2.0 - 2.0 * unit @ unit.t()).clamp_min(0.0)


@register_objective("triplet")
class TripletDistillationObjective(Objective):
    """Triplet loss on the student with teacher-dependent per-triplet margins."""

    requires = frozenset({"embedding"})
    relational = True
    default_weight = 1.0

    def __init__(
        self, margin_min: float = 0.2, margin_max: float = 0.5, mining: str = "all", eps: float = 1e-12
    ) -> None:
        super().__init__()
        if not 0 <= margin_min <= margin_max:
            raise ValueError(
                f"triplet: need 0 <= margin_min <= margin_max, got margin_min={margin_min}, "
                f"margin_max={margin_max}"
            )
        if mining not in ("all", "batch_hard"):
            raise ValueError(f"triplet: mining must be 'all' or 'batch_hard', got {mining!r}")
        self.margin_min = float(margin_min)
        self.margin_max = float(margin_max)
        self.mining = mining
        self.eps = float(eps)
        self._last: dict[str, torch.Tensor] = {}

    def _margins(self, gap_t: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """m = m_min + (m_max - m_min) d / d_max with d = max(gap_t, 0) over the ``valid`` triplets."""
        d = gap_t.clamp_min(0.0).masked_fill(~valid, 0.0)
        d_max = d.max()
        if d_max <= 0:
            return torch.full_like(d, self.margin_min)
        return self.margin_min + (self.margin_max - self.margin_min) * d / d_max

    def forward(self, student: Features, teacher: Features, labels: torch.Tensor) -> torch.Tensor:
        s, t = student_teacher_pair(
            self.name, "embedding", student.embedding, teacher.embedding, same_width=False
        )
        check_batch(self.name, "embedding", s, labels)
        d_s = _normalised_squared_distances(s, self.eps)
        with torch.no_grad():
            d_t = _normalised_squared_distances(t, self.eps)
        same = labels.unsqueeze(0) == labels.unsqueeze(1)
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        positive = same & ~eye
        negative = ~same
        if not bool(positive.any()) or not bool(negative.any()):
            warn_once(
                "triplet-no-triplets",
                "triplet distillation: a batch has no valid triplet (it needs at least two images of one "
                "identity and one image of another); its loss is 0. Use an identity-balanced sampler.",
            )
            self._last = {"triplets": s.new_zeros(())}
            return zero_loss(s)
        if self.mining == "all":
            anchor, pos = positive.nonzero(as_tuple=True)  # one row per (a, p) pair
            valid = negative[anchor]  # pairs x B: the negatives of each pair's anchor
            hinge_s = d_s[anchor, pos].unsqueeze(1) - d_s[anchor]
            with torch.no_grad():
                margins = self._margins(d_t[anchor] - d_t[anchor, pos].unsqueeze(1), valid)
            losses = (hinge_s + margins).clamp_min(0.0)[valid]
        else:
            has_both = positive.any(dim=1) & negative.any(dim=1)
            rows = torch.arange(len(labels), device=labels.device)
            with torch.no_grad():
                hardest_pos = d_s.masked_fill(~positive, float("-inf")).argmax(dim=1)
                hardest_neg = d_s.masked_fill(~negative, float("inf")).argmin(dim=1)
                gap_t = d_t[rows, hardest_neg] - d_t[rows, hardest_pos]
                margins = self._margins(gap_t, has_both)
            hinge_s = d_s[rows, hardest_pos] - d_s[rows, hardest_neg]
            losses = (hinge_s + margins).clamp_min(0.0)[has_both]
        self._last = {"triplets": torch.tensor(float(losses.numel()))}
        return losses.mean()

    def log_items(self) -> dict[str, torch.Tensor]:
        """Number of triplets the last forward averaged over."""
        return dict(self._last)

    def extra_repr(self) -> str:
        return f"margin_min={self.margin_min}, margin_max={self.margin_max}, mining={self.mining!r}"
