"""The recognition loss used by the training modules: a head plus softmax cross-entropy.

``RecognitionLoss(head, embedding_size, num_classes, sharded=False, sample_rate=1.0, **head_hparams)``
hides whether the class centres are replicated (an ordinary head, every rank computing the loss of
its own batch, DDP averaging the gradients) or split over ranks (``ekd.heads.sharded``: the loss of
the global batch, identical on every rank). Either way the objective is the mean cross-entropy over
the global batch. ``sample_rate < 1`` (Partial FC's negative-class sampling) uses the sharded path
even on one process.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ekd.heads.base import Head, create
from ekd.heads.sharded import ShardedClassifier


class RecognitionLoss(nn.Module):
    """Cross-entropy of a recognition head; see the module docstring."""

    def __init__(
        self,
        head: str,
        embedding_size: int,
        num_classes: int,
        sharded: bool = False,
        sample_rate: float = 1.0,
        **head_hparams,
    ) -> None:
        super().__init__()
        if not (isinstance(sample_rate, (int, float)) and 0.0 < sample_rate <= 1.0):
            raise ValueError(f"sample_rate must lie in (0, 1], got {sample_rate!r}")
        self.head_name = head
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.sharded = bool(sharded) or sample_rate < 1.0
        if self.sharded:
            self.classifier: ShardedClassifier | Head = ShardedClassifier(
                head, embedding_size, num_classes, sample_rate=sample_rate, **head_hparams
            )
        else:
            self.classifier = create(head, embedding_size, num_classes, **head_hparams)

    @property
    def head(self) -> Head:
        """The margin head (when sharded, its ``weight`` holds this rank's rows only)."""
        return self.classifier.head if isinstance(self.classifier, ShardedClassifier) else self.classifier

    def shard_(self, root: nn.Module | None = None) -> RecognitionLoss:
        """Split the centres over the initialised process group (no-op unless sharded); see
        :meth:`ShardedClassifier.shard_` for ``root`` (the module DDP will wrap)."""
        if isinstance(self.classifier, ShardedClassifier):
            self.classifier.shard_(root)
        return self

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean cross-entropy, logits with margin) — logits are None when sharded."""
        if isinstance(self.classifier, ShardedClassifier):
            return self.classifier(embeddings, labels), None
        logits = self.classifier(embeddings, labels)
        return F.cross_entropy(logits, labels.long()), logits

    def margin_free_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """N x C logits without margin (s cos theta, W x + b, ...) against all centres, for KD/inference."""
        if isinstance(self.classifier, ShardedClassifier):
            return self.classifier.margin_free_logits(embeddings)
        return self.classifier(embeddings, None)

    def centres(self) -> torch.Tensor:
        """All C x D class centres as stored (not normalised), detached; all-gathered when sharded."""
        if isinstance(self.classifier, ShardedClassifier):
            return self.classifier.centres()
        return self.classifier.weight.detach()

    @torch.no_grad()
    def set_centres(self, centres: torch.Tensor, freeze: bool = False) -> None:
        """Copy C x D centres into the head (this rank's rows when sharded); ``freeze``: no training."""
        if centres.shape != (self.num_classes, self.embedding_size):
            raise ValueError(
                f"centres must have shape ({self.num_classes}, {self.embedding_size}) (classes x embedding), "
                f"got {tuple(centres.shape)}"
            )
        weight = self.head.weight
        if isinstance(self.classifier, ShardedClassifier):
            start = self.classifier.class_start
            centres = centres[start : start + self.classifier.num_local]
        weight.copy_(centres.to(weight))
        if freeze:
            weight.requires_grad_(False)
