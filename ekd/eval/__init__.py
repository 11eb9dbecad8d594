"""Evaluation: the LFW-style verification protocol, flip-sum embedding extraction, IJB-B/C 1:1
template verification (insightface's or TFace's scoring protocol, ``ekd.eval.ijb``), ROC plots and a
Lightning callback running verification during training.

``evaluate_backbone`` / ``verify_sets`` (``ekd.eval.evaluate``) are the one embed-then-verify routine
used by ekd-train, ekd-eval and the callback.

The callback lives in ``ekd.eval.callback`` (imported from there, so that using the protocol does not
import pytorch_lightning).
"""

from ekd.eval.embed import EmbeddingResult, OnnxEmbedder, TorchEmbedder, extract_embeddings
from ekd.eval.evaluate import (
    config_ijb_protocol,
    evaluate_backbone,
    evaluate_ijb_sets,
    evaluate_trained,
    evaluation_device,
    measure_throughput,
    protocol_record,
    select_sets,
    verification_records,
    verify_sets,
)
from ekd.eval.ijb import IJB_PROTOCOLS, IJBProtocol, IJBResult, evaluate_ijb, ijb_protocol
from ekd.eval.metrics import FPR_TARGETS, auc, downsample_roc, eer, fpr_key, roc_curve, tpr_at_fpr
from ekd.eval.verification import VerificationResult, fold_accuracies, kfold_bounds, verify

__all__ = [
    "FPR_TARGETS",
    "IJB_PROTOCOLS",
    "EmbeddingResult",
    "IJBProtocol",
    "IJBResult",
    "OnnxEmbedder",
    "TorchEmbedder",
    "VerificationResult",
    "auc",
    "config_ijb_protocol",
    "downsample_roc",
    "eer",
    "evaluate_backbone",
    "evaluate_ijb",
    "evaluate_ijb_sets",
    "evaluate_trained",
    "evaluation_device",
    "extract_embeddings",
    "fold_accuracies",
    "fpr_key",
    "ijb_protocol",
    "kfold_bounds",
    "measure_throughput",
    "protocol_record",
    "roc_curve",
    "select_sets",
    "tpr_at_fpr",
    "verification_records",
    "verify",
    "verify_sets",
]
