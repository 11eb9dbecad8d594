"""Evaluation: the LFW-style verification protocol, flip-sum embedding extraction, IJB-B/C 1:1
template verification, ROC plots and a Lightning callback running verification during training.

The callback lives in ``ekd.eval.callback`` (imported from there, so that using the protocol does not
import pytorch_lightning).
"""

from ekd.eval.embed import EmbeddingResult, OnnxEmbedder, TorchEmbedder, extract_embeddings, normalize_images
from ekd.eval.ijb import IJBResult, evaluate_ijb
from ekd.eval.metrics import FPR_TARGETS, auc, eer, roc_curve, tpr_at_fpr
from ekd.eval.verification import VerificationResult, fold_accuracies, kfold_bounds, verify

__all__ = [
    "FPR_TARGETS",
    "EmbeddingResult",
    "IJBResult",
    "OnnxEmbedder",
    "TorchEmbedder",
    "VerificationResult",
    "auc",
    "eer",
    "evaluate_ijb",
    "extract_embeddings",
    "fold_accuracies",
    "kfold_bounds",
    "normalize_images",
    "roc_curve",
    "tpr_at_fpr",
    "verify",
]
