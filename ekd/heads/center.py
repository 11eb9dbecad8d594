"""Center loss (Wen et al., ECCV 2016): pull each embedding towards the centre of its class.

L_C = 1/2 ||x_i - c_{y_i}||^2, averaged over the batch (``reduction="mean"``, so the weight does not
depend on the batch size; the paper sums over the mini-batch: ``reduction="sum"``).

The centres are *not* trained by the optimiser: they are a buffer updated with the paper's rule
(Algorithm 1, eq. 4) after each training-mode forward, at their own rate alpha:

    delta c_j = sum_i [y_i = j] (c_j - x_i) / (1 + sum_i [y_i = j]),    c_j <- c_j - alpha delta c_j

(the loss itself uses the centres from before the update; the embeddings are treated as constants in
the update). Under DDP the update uses the global batch (gathered without gradient), so the centres
stay identical on every rank; the loss is that of the local batch, as for any per-sample loss.
"""

from __future__ import annotations

import torch
from torch import nn

from ekd import dist
from ekd.heads.base import check_labels


class CenterLoss(nn.Module):
    """0.5 ||x - c_y||^2 with centres updated by Wen et al.'s rule at rate ``alpha`` (module docstring)."""

    def __init__(
        self, embedding_size: int, num_classes: int, alpha: float = 0.5, reduction: str = "mean"
    ) -> None:
        super().__init__()
        if not (0.0 <= alpha <= 1.0):
            raise ValueError(f"center loss: alpha must lie in [0, 1], got {alpha!r}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"center loss: reduction must be 'mean' or 'sum', got {reduction!r}")
        self.embedding_size, self.num_classes = embedding_size, num_classes
        self.alpha, self.reduction = float(alpha), reduction
        self.register_buffer("centres", torch.zeros(num_classes, embedding_size))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"center loss expects embeddings of shape N x {self.embedding_size}, "
                f"got {tuple(embeddings.shape)}"
            )
        check_labels(labels, embeddings.shape[0], self.num_classes, allow_missing=False)
        labels = labels.long()
        per_sample = 0.5 * (embeddings - self.centres[labels].to(embeddings.dtype)).pow(2).sum(dim=1)
        loss = per_sample.mean() if self.reduction == "mean" else per_sample.sum()
        if self.training:
            self.update_centres(dist.gather_nograd(embeddings.detach()), dist.gather_nograd(labels))
        return loss

    @torch.no_grad()
    def update_centres(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """One step of the centre update rule on ``embeddings`` (N x D) with ``labels`` (N)."""
        labels = labels.long()
        embeddings = embeddings.to(self.centres.dtype)
        delta = torch.zeros_like(self.centres).index_add_(0, labels, self.centres[labels] - embeddings)
        counts = torch.bincount(labels, minlength=self.num_classes).to(self.centres.dtype)
        self.centres -= self.alpha * delta / (1.0 + counts)[:, None]

    def extra_repr(self) -> str:
        return f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, alpha={self.alpha}"
