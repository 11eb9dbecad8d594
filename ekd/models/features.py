"""The feature contract between networks and distillation objectives.

Every backbone exposes ``forward_features(x) -> Features``; the Lightning modules add ``logits``.
Objectives declare which fields they need (see ``ekd.distill``), so a missing field is caught at
start-up rather than at step 1000.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

STAGE_NAMES: tuple[str, ...] = ("stage1", "stage2", "stage3", "stage4")


@dataclass
class Features:
    """Outputs of one network on one batch.

    embedding: N x D raw (not normalised) embedding.
    stages: named intermediate maps, ``stage1`` .. ``stage4`` (N x C x H x W) where the backbone has them.
    logits: N x C classification logits (margin-free), filled in by the training module when needed.
    """

    embedding: torch.Tensor
    stages: dict[str, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None

    def has(self, requirement: str) -> bool:
        """``"embedding"``, ``"logits"`` or ``"stages.<name>"``."""
        if requirement == "embedding":
            return self.embedding is not None
        if requirement == "logits":
            return self.logits is not None
        if requirement.startswith("stages."):
            return requirement.split(".", 1)[1] in self.stages
        raise ValueError(f"unknown feature requirement {requirement!r}")

    def map(self, fn) -> Features:
        """Apply ``fn`` to every tensor (e.g. gather across ranks, detach)."""
        return Features(
            embedding=fn(self.embedding),
            stages={k: fn(v) for k, v in self.stages.items()},
            logits=None if self.logits is None else fn(self.logits),
        )
