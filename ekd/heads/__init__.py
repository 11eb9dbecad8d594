"""Recognition heads and losses: softmax ... ArcFace, AdaFace, center and triplet loss, sharded class centres.

Public API (see ARCHITECTURE.md, "Heads"):

* ``create(name, embedding_size, num_classes, **hparams)`` / ``list_heads()``: the margin heads;
  each holds ``weight`` (C x D) and maps ``(embeddings, labels=None)`` to logits.
* ``RecognitionLoss``: head + cross-entropy, replicated or sharded over ranks (Partial FC).
* ``CenterLoss``, ``TripletLoss`` (+ the in-batch mining functions), registered in ``AUX_LOSSES`` as
  ``center`` and ``triplet`` (the auxiliary losses of the training modules).
* ``HEADS``, ``AUX_LOSSES``: the registries (``ekd.registry.Registry``) behind the above.
"""

from ekd.heads import adaface as _adaface  # noqa: F401  (registers the AdaFace head)
from ekd.heads import margins as _margins  # noqa: F401  (registers the heads)
from ekd.heads.adaface import AdaFaceHead
from ekd.heads.base import (
    AUX_LOSSES,
    HEADS,
    Head,
    cosine_logits,
    create,
    head_class,
    list_heads,
    register_head,
    safe_acos,
)
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
from ekd.heads.sharded import ShardedClassifier
from ekd.heads.triplet import (
    TripletLoss,
    all_triplets,
    batch_hard_triplets,
    normalised_pairwise_squared_distances,
    semi_hard_triplets,
    triplet_margin_loss,
)

AUX_LOSSES.register("center")(CenterLoss)
AUX_LOSSES.register("triplet")(TripletLoss)

__all__ = [
    "AUX_LOSSES",
    "HEADS",
    "AdaFaceHead",
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
    "all_triplets",
    "arcface_target",
    "batch_hard_triplets",
    "cosine_logits",
    "create",
    "head_class",
    "list_heads",
    "normalised_pairwise_squared_distances",
    "register_head",
    "safe_acos",
    "semi_hard_triplets",
    "sphereface_psi",
    "triplet_margin_loss",
]
