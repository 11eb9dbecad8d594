"""Evaluation: the LFW-style verification protocol, flip-sum embedding extraction, IJB-B/C 1:1
template verification, ROC plots and a Lightning callback running verification during training."""

from ekd.eval.embed import EmbeddingResult, OnnxEmbedder, TorchEmbedder, extract_embeddings, normalize_images
from ekd.eval.metrics import FPR_TARGETS, auc, eer, roc_curve, tpr_at_fpr
from ekd.eval.verification import VerificationResult, kfold_bounds, verify

__all__ = [
    "FPR_TARGETS",
    "EmbeddingResult",
    "OnnxEmbedder",
    "TorchEmbedder",
    "VerificationResult",
    "auc",
    "eer",
    "extract_embeddings",
    "kfold_bounds",
    "normalize_images",
    "roc_curve",
    "tpr_at_fpr",
    "verify",
]
