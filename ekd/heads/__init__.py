"""Recognition heads and losses: softmax ... ArcFace, center and triplet loss, sharded class centres.

Public API (see ARCHITECTURE.md, "Heads"):

* ``create(name, embedding_size, num_classes, **hparams)`` / ``list_heads()``: the margin heads;
  each holds ``weight`` (C x D) and maps ``(embeddings, labels=None)`` to logits.
* ``RecognitionLoss``: head + cross-entropy, replicated or sharded over ranks (Partial FC).
* ``CenterLoss``, ``TripletLoss`` (+ the in-batch mining functions).
"""

from ekd.heads import margins as _margins  # noqa: F401  (registers the heads)
from ekd.heads.base import Head, cosine_logits, create, head_class, list_heads, register_head, safe_acos
from ekd.heads.center import CenterLoss
from ekd.heads.loss import RecognitionLoss
from ekd.heads.margins import (
    ArcFaceHead,
    CombinedMarginHead,
    CosFaceHead,
    NormFaceHead,
    SoftmaxHead,
    SphereFaceHead,
    arcface_target,
    sphereface_psi,
)
from ekd.heads.sharded import ShardedClassifier, shard_range
from ekd.heads.triplet import (
    TripletLoss,
    batch_hard_triplets,
    semi_hard_triplets,
    squared_distances,
    triplet_margin_loss,
)

__all__ = [
    "ArcFaceHead",
    "CenterLoss",
    "CombinedMarginHead",
    "CosFaceHead",
    "Head",
    "NormFaceHead",
    "RecognitionLoss",
    "ShardedClassifier",
    "SoftmaxHead",
    "SphereFaceHead",
    "TripletLoss",
    "arcface_target",
    "batch_hard_triplets",
    "cosine_logits",
    "create",
    "head_class",
    "list_heads",
    "register_head",
    "safe_acos",
    "semi_hard_triplets",
    "shard_range",
    "sphereface_psi",
    "squared_distances",
    "triplet_margin_loss",
]
