"""RKD: relational knowledge distillation, distance + angle terms (Park et al., CVPR 2019).

Distance term, per model: psi_D(i, j) = ||x_i - x_j|| / mu, mu = mean of the non-zero pairwise
distances of that model's batch (so the term is scale-invariant), taken over all pairs i != j: a
duplicate sample (distance 0 off the diagonal) is counted in that mean as in the authors' code,
where such a pair has distance sqrt(eps) > 0 and passes their "> 0" test;
    L_D = mean over all B x B pairs (i, j) of SmoothL1(psi_D^s(i, j) - psi_D^t(i, j)).
Angle term: psi_A(i, j, k) = <e_ji, e_ki>, e_ji = (x_j - x_i) / ||x_j - x_i|| the unit vector from the
vertex x_i (a zero vector when x_j = x_i);
    L_A = mean over all B x B x B triples of SmoothL1(psi_A^s - psi_A^t).
L_RKD = 25 L_D + 50 L_A (``distance_weight``, ``angle_weight``); SmoothL1 with beta = 1. The means
include the degenerate entries (i = j, vertex = endpoint), which are 0 for both models, exactly as in
the authors' code. Invariant to translation, rotation and scaling of either model's embeddings; zero
when the student equals the teacher. Raw (unnormalised) embeddings; recommended weight 1 (the two
weights above are the method's). Relational: computed on the global batch.

Memory. The direct angle computation materialises B x B x D difference vectors and B x B x B
angles per model and keeps them for the backward pass: at B = 512, D = 512 (float32) that is
0.5 GiB per tensor and several GiB in total. Here the vertices are processed in chunks of
``angle_chunk`` (default 32): a chunk builds c x B x D unit differences and c x B x B angles, reduces
them to a partial sum at once and, when gradients are needed, is wrapped in activation checkpointing
so that only the inputs are kept and the chunk is recomputed in the backward pass. Peak extra memory
is then a few c x B x D tensors (32 x 512 x 512 x 4 B = 32 MiB each) instead of the whole cube; the
result is exact (the same sum, in another order). Measured peak memory of forward + backward at
B = 512, D = 512, float32, on CPU (resident set above the baseline, glibc told to return freed
blocks at once): unchunked 3.0 GiB, chunk 128 0.85 GiB, chunk 32 0.28 GiB, chunk 8 0.14 GiB, all
giving the same loss; the price is one recomputation of the angle cube in the backward pass.
``angle_anchors`` (default None = all) additionally subsamples that many
vertices per call (uniformly, without replacement): an unbiased estimate of L_A at a cost linear in
the number of anchors (under DDP every rank uses rank 0's draw, so the ranks agree).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ekd import dist
from ekd.distill.base import Objective, register_objective
from ekd.distill.common import check_batch, distances, student_teacher_pair
from ekd.models.features import Features


def _normalised_distances(x: torch.Tensor, eps: float) -> torch.Tensor:
    d = distances(x, eps=eps)
    b = x.shape[0]
    # mean over the B(B - 1) pairs i != j (the diagonal is the only exact zero; see the module docstring)
    mu = d.sum() / (b * (b - 1))
    if mu <= 0:  # every point coincides: nothing to normalise, all distances are 0
        return d
    return d / mu


def _angle_chunk_sum(s: torch.Tensor, t: torch.Tensor, vertices: torch.Tensor) -> torch.Tensor:
    """Sum over the given vertices i and all (j, k) of SmoothL1(<e_ji, e_ki>_s - <e_ji, e_ki>_t)."""
    e_s = F.normalize(s.unsqueeze(0) - s[vertices].unsqueeze(1), p=2, dim=2)
    angles_s = torch.bmm(e_s, e_s.transpose(1, 2))
    with torch.no_grad():
        e_t = F.normalize(t.unsqueeze(0) - t[vertices].unsqueeze(1), p=2, dim=2)
        angles_t = torch.bmm(e_t, e_t.transpose(1, 2))
    return F.smooth_l1_loss(angles_s, angles_t, reduction="sum")


def rkd_angle_loss(
    student: torch.Tensor, teacher: torch.Tensor, chunk: int | None = 32, vertices: torch.Tensor | None = None
) -> torch.Tensor:
    """L_A over ``vertices`` (default: all B), processed ``chunk`` vertices at a time (None: all at once)."""
    b = student.shape[0]
    if vertices is None:
        vertices = torch.arange(b, device=student.device)
    step = len(vertices) if not chunk else int(chunk)
    total = student.new_zeros(())
    for start in range(0, len(vertices), step):
        part = vertices[start : start + step]
        if student.requires_grad and step < len(vertices):
            # keep only the inputs; the chunk's c x B x D tensors are rebuilt in the backward pass
            total = total + checkpoint(_angle_chunk_sum, student, teacher, part, use_reentrant=False)
        else:
            total = total + _angle_chunk_sum(student, teacher, part)
    return total / (len(vertices) * b * b)


@register_objective("rkd")
class RKDObjective(Objective):
    """Relational KD: Smooth-L1 on normalised pairwise distances and on angles of triples."""

    requires = frozenset({"embedding"})
    relational = True
    default_weight = 1.0

    def __init__(
        self,
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
        angle_chunk: int | None = 32,
        angle_anchors: int | None = None,
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        if distance_weight < 0 or angle_weight < 0:
            raise ValueError(
                f"rkd: weights must be >= 0, got distance {distance_weight}, angle {angle_weight}"
            )
        if angle_chunk is not None and int(angle_chunk) < 0:
            raise ValueError(
                f"rkd: angle_chunk must be >= 1 (or None / 0 for no chunking), got {angle_chunk}"
            )
        if angle_anchors is not None and int(angle_anchors) < 1:
            raise ValueError(f"rkd: angle_anchors must be >= 1 or None (all), got {angle_anchors}")
        self.distance_weight = float(distance_weight)
        self.angle_weight = float(angle_weight)
        self.angle_chunk = int(angle_chunk) if angle_chunk else None
        self.angle_anchors = None if angle_anchors is None else int(angle_anchors)
        self.eps = float(eps)
        self._last: dict[str, torch.Tensor] = {}

    def forward(self, student: Features, teacher: Features, labels: torch.Tensor) -> torch.Tensor:
        s, t = student_teacher_pair(
            self.name, "embedding", student.embedding, teacher.embedding, same_width=False
        )
        check_batch(self.name, "embedding", s, min_size=2)
        loss = s.new_zeros(())
        if self.distance_weight:
            with torch.no_grad():
                d_t = _normalised_distances(t, self.eps)
            loss_d = F.smooth_l1_loss(_normalised_distances(s, self.eps), d_t, reduction="mean")
            loss = loss + self.distance_weight * loss_d
            self._last["distance"] = loss_d.detach()
        if self.angle_weight:
            vertices = None
            if self.angle_anchors is not None and self.angle_anchors < s.shape[0]:
                vertices = torch.randperm(s.shape[0], device=s.device)[: self.angle_anchors]
                # every rank must compute the same loss on the global batch: use rank 0's draw
                dist.broadcast_(vertices, src=0)
            loss_a = rkd_angle_loss(s, t, chunk=self.angle_chunk, vertices=vertices)
            loss = loss + self.angle_weight * loss_a
            self._last["angle"] = loss_a.detach()
        return loss

    def log_items(self) -> dict[str, torch.Tensor]:
        """Unweighted distance and angle terms of the last forward."""
        return dict(self._last)

    def extra_repr(self) -> str:
        return (
            f"distance_weight={self.distance_weight}, angle_weight={self.angle_weight}, "
            f"angle_chunk={self.angle_chunk}, angle_anchors={self.angle_anchors}"
        )
