"""Evaluation: the LFW-style verification protocol, flip-sum embedding extraction, IJB-B/C 1:1
template verification (insightface's or TFace's scoring protocol, ``ekd.eval.ijb``), all-vs-all
template verification at low FPR on template sets (``ekd.eval.templates``: the synthetic benchmark's
``synth_ijb``), ROC plots and a Lightning callback running verification during training.

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
    evaluate_template_sets,
    evaluate_trained,
    evaluation_device,
    measure_throughput,
    protocol_record,
    select_eval_sets,
    select_sets,
    verification_records,
    verify_sets,
)
from ekd.eval.ijb import IJB_PROTOCOLS, IJBProtocol, IJBResult, evaluate_ijb, ijb_protocol
from ekd.eval.metrics import FPR_TARGETS, auc, downsample_roc, eer, fpr_key, roc_curve, tpr_at_fpr
from ekd.eval.templates import (
    TEMPLATE_FPRS,
    TemplateProtocol,
    TemplateResult,
    evaluate_templates,
    score_templates,
    template_protocol,
)
from ekd.eval.verification import VerificationResult, fold_accuracies, kfold_bounds, verify

__all__ = [
    "FPR_TARGETS",
    "IJB_PROTOCOLS",
    "TEMPLATE_FPRS",
    "EmbeddingResult",
    "IJBProtocol",
    "IJBResult",
    "OnnxEmbedder",
    "TemplateProtocol",
    "TemplateResult",
    "TorchEmbedder",
    "VerificationResult",
    "auc",
    "config_ijb_protocol",
    "downsample_roc",
    "eer",
    "evaluate_backbone",
    "evaluate_ijb",
    "evaluate_ijb_sets",
    "evaluate_template_sets",
    "evaluate_templates",
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
    "score_templates",
    "select_eval_sets",
    "select_sets",
    "template_protocol",
    "tpr_at_fpr",
    "verification_records",
    "verify",
    "verify_sets",
]
