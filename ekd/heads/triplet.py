"""Triplet loss (Schroff et al., FaceNet, CVPR 2015) with online mining inside the batch.

On L2-normalised embeddings with squared distances D(a, b) = ||f^_a - f^_b||^2 (= 2 - 2 cos):

    L = mean over mined triplets of max(0, D(a, p) - D(a, n) + alpha),  alpha = 0.2

Mining (every sample is an anchor that has a positive and a negative in the batch):

* ``batch_hard`` (Hermans et al. 2017): per anchor, its farthest positive and its closest negative.
* ``semi_hard`` (FaceNet, all anchor-positive pairs): per pair (a, p), the closest negative that is
  farther than the positive, D(a, n) > D(a, p); when it lies within the margin it is a semi-hard
  negative and the triplet has a loss, otherwise no semi-hard negative exists and the triplet
  contributes zero. Fallback when *no* negative is farther than the positive (all are hard): the
  farthest negative, i.e. the least hard one (as TensorFlow's ``triplet_semihard_loss``): it keeps a
  gradient without pulling training onto the hardest negatives, which FaceNet found to collapse.

A batch without any valid triplet gives a zero loss that is still connected to the graph. The distance
matrix, the mining functions (plus :func:`all_triplets`, every valid triplet) and
:func:`triplet_margin_loss` (which accepts one margin per triplet) are public: triplet distillation
(``ekd.distill.triplet``) mines with them rather than with a copy of its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ekd.heads.base import check_labels

MINING = ("batch_hard", "semi_hard")


def normalised_pairwise_squared_distances(embeddings: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """N x N squared L2 distances between the L2-normalised rows: 2 - 2 cos, clamped at 0, zero diagonal.

    ``eps`` guards the normalisation of all-zero rows (``F.normalize``). For distances between the raw
    rows see ``ekd.distill.common.pairwise_squared_distances``.
    """
    unit = F.normalize(embeddings, dim=1, eps=eps)
    distances = (2.0 - 2.0 * unit @ unit.t()).clamp(min=0.0)
    # rounding leaves ~1e-7 on the diagonal; a product (not masked_fill) keeps it out of the gradient too
    return distances * (1.0 - torch.eye(len(unit), dtype=unit.dtype, device=unit.device))


def _masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """N x N (positive, negative) masks: same label other sample, different label."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


@torch.no_grad()
def all_triplets(labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every valid triplet (a != p, y_a = y_p, y_n != y_a), densely: ``(anchors, positives, negatives)``
    with the P anchor-positive pairs in row-major order and ``negatives`` a P x N boolean mask (row i:
    the negatives of pair i's anchor).

    Dense rather than one index per triplet: a loss then reads each pair's distances to every sample as
    one row ``D[anchors]`` (P x N), and its gradient sums over a row rather than over scattered indices.
    """
    positive, negative = _masks(labels)
    anchors, positives = positive.nonzero(as_tuple=True)
    return anchors, positives, negative[anchors]


@torch.no_grad()
def batch_hard_triplets(distances: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(anchor, positive, negative) indices: per anchor the farthest positive and the closest negative."""
    positive, negative = _masks(labels)
    valid = positive.any(dim=1) & negative.any(dim=1)
    anchors = valid.nonzero().squeeze(1)
    hardest_positive = distances.masked_fill(~positive, float("-inf")).argmax(dim=1)
    hardest_negative = distances.masked_fill(~negative, float("inf")).argmin(dim=1)
    return anchors, hardest_positive[anchors], hardest_negative[anchors]


@torch.no_grad()
def semi_hard_triplets(distances: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(anchor, positive, negative) indices for every anchor-positive pair (see the module docstring)."""
    positive, negative = _masks(labels)
    anchors, positives = (positive & negative.any(dim=1, keepdim=True)).nonzero(as_tuple=True)
    d_ap = distances[anchors, positives][:, None]  # P x 1
    d_an = distances[anchors]  # P x N
    is_negative = negative[anchors]
    farther = is_negative & (d_an > d_ap)
    closest_farther = d_an.masked_fill(~farther, float("inf")).argmin(dim=1)
    farthest = d_an.masked_fill(~is_negative, float("-inf")).argmax(dim=1)
    negatives = torch.where(farther.any(dim=1), closest_farther, farthest)
    return anchors, positives, negatives


def triplet_margin_loss(
    distances: torch.Tensor,
    anchors: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    margin: float | torch.Tensor,
) -> torch.Tensor:
    """Mean of max(0, D(a, p) - D(a, n) + margin) over the given triplets (margin: scalar or per triplet)."""
    if anchors.numel() == 0:
        return distances.sum() * 0.0
    hinge = distances[anchors, positives] - distances[anchors, negatives] + margin
    return F.relu(hinge).mean()


class TripletLoss(nn.Module):
    """FaceNet triplet loss on normalised embeddings with in-batch mining (module docstring)."""

    def __init__(self, margin: float = 0.2, mining: str = "semi_hard") -> None:
        super().__init__()
        if mining not in MINING:
            raise ValueError(f"triplet loss: mining must be one of {MINING}, got {mining!r}")
        if not margin >= 0:
            raise ValueError(f"triplet loss: margin must be non-negative, got {margin!r}")
        self.margin, self.mining = float(margin), mining

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if embeddings.dim() != 2:
            raise ValueError(f"triplet loss expects N x D embeddings, got shape {tuple(embeddings.shape)}")
        check_labels(labels, embeddings.shape[0], num_rows=torch.iinfo(torch.int64).max, allow_missing=False)
        distances = normalised_pairwise_squared_distances(embeddings)
        mine = batch_hard_triplets if self.mining == "batch_hard" else semi_hard_triplets
        anchors, positives, negatives = mine(distances.detach(), labels)
        return triplet_margin_loss(distances, anchors, positives, negatives, self.margin)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, mining={self.mining!r}"
