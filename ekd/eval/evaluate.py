"""Embed, then verify: the one routine behind ekd-train's final evaluation, ekd-eval and the callback.

:func:`verify_sets` embeds each .bin-style set (flip sum, :func:`ekd.eval.extract_embeddings`; an image
in several pairs is embedded once) and runs the verification protocol (:func:`ekd.eval.verify`) on it.
A set whose embeddings are not finite (a diverged network) gives ``None`` and a warning instead of an
exception, so that the other sets, and the other jobs of a sweep, still get their results.

:func:`verification_records` turns those results into what results files store: per set
``VerificationResult.to_dict()`` (or ``{"accuracy": None, "error": "non-finite embeddings"}``) and a
down-sampled ROC curve; :func:`evaluate_backbone` is the two in one call. :func:`evaluate_ijb_sets`
does the same for IJB-B/C 1:1 under a named scoring protocol (a torch backbone with non-finite
weights gets the error entry without being run), :func:`measure_throughput` times inference (whatever
the weights hold). Embeddings are fp32 unless ``precision`` asks for autocast (``ekd.eval.embed``);
:func:`protocol_record` is what ``results.json`` records of both (``eval_protocol``).

:func:`evaluate_template_sets` scores template sets (``ekd.data.templates``; the synthetic benchmark's
``synth_ijb``) all-vs-all at low FPR (``ekd.eval.templates``); their entries in ``metrics`` have TPR@FPR
and the genuine / impostor counts, no accuracy. :func:`select_eval_sets` picks pair sets and template
sets by name (``eval.sets``).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ekd.choices import EvalPrecision, IJBProtocolName
from ekd.eval import metrics
from ekd.eval.embed import extract_embeddings, parse_precision
from ekd.eval.ijb import IJBProtocol, evaluate_ijb, ijb_protocol
from ekd.eval.templates import TemplateProtocol, evaluate_templates
from ekd.eval.verification import VerificationResult, verify

#: name -> (uint8 images 2N x 3 x H x W, N issame labels)
VerificationSets = Mapping[str, tuple[torch.Tensor | np.ndarray, Sequence[bool] | np.ndarray | torch.Tensor]]

NONFINITE_ERROR = "non-finite embeddings"


def select_sets(available: Mapping[str, Any], wanted: Iterable[str] | None, key: str) -> dict[str, Any]:
    """The sets named in ``wanted`` (in that order), or all of ``available`` for ``None``.

    An unknown name raises ``ValueError`` naming the setting ``key`` (e.g. ``"eval.sets"``) and the
    sets that do exist.
    """
    if wanted is None:
        return dict(available)
    wanted = [str(name) for name in wanted]
    unknown = [name for name in wanted if name not in available]
    if unknown:
        raise ValueError(f"{key}: unknown verification sets {unknown}; the data provides {sorted(available)}")
    return {name: available[name] for name in wanted}


def select_eval_sets(
    pair_sets: Mapping[str, Any], template_sets: Mapping[str, Any], wanted: Iterable[str] | None, key: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pair sets, template sets) named in ``wanted``, or all of both for ``None``; a name is looked up
    among the pair sets first. An unknown name is a ValueError naming ``key`` and the sets that exist."""
    if wanted is None:
        return dict(pair_sets), dict(template_sets)
    wanted = [str(name) for name in wanted]
    unknown = [name for name in wanted if name not in pair_sets and name not in template_sets]
    if unknown:
        available = sorted({*pair_sets, *template_sets})
        raise ValueError(f"{key}: unknown verification sets {unknown}; the data provides {available}")
    pairs = [name for name in wanted if name in pair_sets]
    return select_sets(pair_sets, pairs, key), {
        name: template_sets[name] for name in wanted if name not in pair_sets
    }


def verify_sets(
    backbone: Any,
    sets: VerificationSets,
    batch_size: int,
    *,
    flip: bool = True,
    n_folds: int = 10,
    fprs: Iterable[float] = metrics.FPR_TARGETS,
    shard: bool = False,
    precision: str | EvalPrecision = EvalPrecision.fp32,
) -> dict[str, VerificationResult | None]:
    """Embed every set with ``backbone`` and verify it; ``None`` (with a warning) for non-finite embeddings.

    ``backbone``: anything :func:`ekd.eval.extract_embeddings` accepts (nn.Module, ONNX path or
    session, batch embedder). ``sets`` is read one set at a time, so a lazy mapping keeps only one set
    in memory. ``shard=True`` embeds one slice per rank and gathers (every rank must call it; all get
    the same results). ``precision``: fp32 by default (:func:`ekd.eval.extract_embeddings`).
    """
    fprs = tuple(fprs)  # read once per set: an iterator would be exhausted after the first
    results: dict[str, VerificationResult | None] = {}
    for name, (images, issame) in sets.items():
        embedded = extract_embeddings(
            backbone, images, batch_size=batch_size, flip=flip, shard=shard, precision=precision, dedupe=True
        )
        if not bool(embedded.embeddings.isfinite().all()):
            # a diverged network: recorded (and reported by ekd-table as a missing cell), not fatal
            warnings.warn(
                f"verification set {name}: the backbone produces non-finite embeddings", stacklevel=2
            )
            results[name] = None
            continue
        results[name] = verify(embedded.embeddings, issame, n_folds=n_folds, fprs=fprs, xnorm=embedded.xnorm)
    return results


def result_record(result: VerificationResult | None) -> dict[str, Any]:
    """The results-file entry of one set: ``result.to_dict()``, or the error entry for ``None``."""
    if result is None:
        return {"accuracy": None, "error": NONFINITE_ERROR}
    return result.to_dict()


def verification_records(
    results: Mapping[str, VerificationResult | None], roc_points: int | None = 200
) -> tuple[dict[str, dict], dict[str, dict]]:
    """(metrics, ROC curves) per set as results files store them (see :func:`result_record`).

    Curves have at most ``roc_points`` points (:func:`ekd.eval.metrics.downsample_roc`; ``None`` keeps
    every point); a set without a result has no curve.
    """
    records = {name: result_record(result) for name, result in results.items()}
    rocs = {
        name: metrics.downsample_roc(result.roc_fpr, result.roc_tpr, roc_points)
        for name, result in results.items()
        if result is not None
    }
    return records, rocs


def evaluate_backbone(
    backbone: Any,
    sets: VerificationSets,
    batch_size: int,
    roc_points: int | None = 200,
    flip: bool = True,
    *,
    n_folds: int = 10,
    precision: str | EvalPrecision = EvalPrecision.fp32,
) -> tuple[dict[str, dict], dict[str, dict]]:
    """Verification metrics (``VerificationResult.to_dict()``) and down-sampled ROC curves per set.

    A set whose embeddings are non-finite gets ``{"accuracy": None, "error": "non-finite embeddings"}``
    (and a warning) rather than raising. See :func:`verify_sets` and :func:`verification_records`.
    """
    results = verify_sets(backbone, sets, batch_size, flip=flip, n_folds=n_folds, precision=precision)
    return verification_records(results, roc_points)


def evaluate_ijb_sets(
    backbone: Any,
    root: str,
    names: Iterable[str],
    batch_size: int,
    roc_points: int | None = 200,
    *,
    protocol: str | IJBProtocolName | IJBProtocol = "insightface",
    precision: str | EvalPrecision = EvalPrecision.fp32,
) -> tuple[dict[str, dict], dict[str, dict]]:
    """IJB-B/C 1:1 template verification (:func:`ekd.eval.evaluate_ijb`, scored by ``protocol``, embedded
    in ``precision``) of ``backbone`` on each of ``names`` under ``root``: (``IJBResult.to_dict()``,
    down-sampled ROC) per lower-cased set name.

    A torch ``backbone`` whose weights are not finite (a diverged run) gets the error entry of
    :func:`result_record` for every set, with a warning, instead of an exception from the scoring.
    """
    records: dict[str, dict] = {}
    rocs: dict[str, dict] = {}
    diverged = isinstance(backbone, nn.Module) and not weights_finite(backbone)
    for name in names:
        if diverged:
            # NaN scores would make the ROC raise, after hours of embedding the IJB images for nothing
            warnings.warn(f"IJB set {name}: the backbone has non-finite weights; not evaluated", stacklevel=2)
            records[str(name).lower()] = result_record(None)
            continue
        result = evaluate_ijb(
            backbone, root, name=str(name), batch_size=batch_size, protocol=protocol, precision=precision
        )
        key = str(name).lower()  # results files name every set in lower case ("ijbc", "lfw")
        records[key] = result.to_dict()
        rocs[key] = metrics.downsample_roc(result.roc_fpr, result.roc_tpr, roc_points)
    return records, rocs


def evaluate_template_sets(
    backbone: Any,
    sets: Mapping[str, Any],
    batch_size: int,
    *,
    protocol: TemplateProtocol | None = None,
    precision: str | EvalPrecision = EvalPrecision.fp32,
) -> dict[str, dict]:
    """Template verification at low FPR (:func:`ekd.eval.templates.evaluate_templates`) of ``backbone``
    on each set (name -> :class:`~ekd.data.templates.TemplateSet` or its file): ``TemplateResult.to_dict()``
    per set, or the error entry of :func:`result_record` (with a warning) when the weights or the
    features are not finite."""
    records: dict[str, dict] = {}
    diverged = isinstance(backbone, nn.Module) and not weights_finite(backbone)
    for name, template_set in sets.items():
        if diverged:
            warnings.warn(
                f"template set {name}: the backbone has non-finite weights; not evaluated", stacklevel=2
            )
            records[name] = result_record(None)
            continue
        result = evaluate_templates(backbone, template_set, batch_size, protocol, precision, name=name)
        records[name] = result_record(result)
    return records


def weights_finite(module: nn.Module) -> bool:
    """Whether every parameter and floating-point buffer of ``module`` is finite."""
    tensors = [t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def measure_throughput(backbone: nn.Module, batch_size: int, warmup: int, iterations: int) -> dict[str, Any]:
    """Inference images/s of ``backbone`` (eval mode, no gradients) on random inputs of its input size.

    Runs on the device of the backbone's parameters; its train/eval mode is restored afterwards.
    Returns ``images_per_s`` (None when the clock did not advance), ``batch_size``, ``iterations``,
    ``device`` and ``threads`` (torch's intra-op CPU threads).
    """
    parameters = list(backbone.parameters())
    device = parameters[0].device if parameters else torch.device("cpu")
    height, width = getattr(backbone, "input_size", (112, 112))
    images = torch.randn(batch_size, 3, height, width, device=device)
    was_training = backbone.training
    backbone.eval()

    def sync() -> None:
        # CUDA runs asynchronously: without a sync the clock would time the kernel launches only
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    try:
        with torch.no_grad():
            for _ in range(warmup):
                backbone(images)
            sync()
            start = time.perf_counter()
            for _ in range(iterations):
                backbone(images)
            sync()
            elapsed = time.perf_counter() - start
    finally:
        backbone.train(was_training)
    return {
        "images_per_s": batch_size * iterations / elapsed if elapsed > 0 else None,
        "batch_size": batch_size,
        "iterations": iterations,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }


def evaluation_device(accelerator: str) -> torch.device:
    """Where the trained backbone is evaluated: the GPU when training asked for one and one exists."""
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def evaluate_trained(
    backbone: nn.Module,
    sets: VerificationSets,
    batch_size: int,
    roc_points: int | None = 200,
    ijb_root: str | None = None,
    ijb_sets: Iterable[str] = (),
    *,
    ijb_protocol: str | IJBProtocolName | IJBProtocol = "insightface",
    precision: str | EvalPrecision = EvalPrecision.fp32,
    template_sets: Mapping[str, Any] | None = None,
    template_protocol: TemplateProtocol | None = None,
) -> tuple[dict[str, dict], dict[str, dict], float | None]:
    """The final evaluation of a trained backbone (what ``ekd-train`` records): the pair-verification
    ``sets``, the ``template_sets`` (name -> template set or its file, scored by ``template_protocol``;
    no ROC curve) and, with ``ijb_root``, IJB-B/C 1:1 on ``ijb_sets`` scored by ``ijb_protocol``; all
    embedded in ``precision``. Returns (metrics per set, ROC curves per set, the mean accuracy over the
    pair-verification sets that have one, or None)."""
    metrics, rocs = evaluate_backbone(backbone, sets, batch_size, roc_points, precision=precision)
    if template_sets:
        metrics.update(
            evaluate_template_sets(
                backbone, template_sets, batch_size, protocol=template_protocol, precision=precision
            )
        )
    if ijb_root:
        ijb_metrics, ijb_rocs = evaluate_ijb_sets(
            backbone, ijb_root, ijb_sets, batch_size, roc_points, protocol=ijb_protocol, precision=precision
        )
        metrics.update(ijb_metrics)
        rocs.update(ijb_rocs)
    # IJB and template entries have no accuracy; a diverged set has accuracy None
    accuracies = [m["accuracy"] for m in metrics.values() if m.get("accuracy") is not None]
    return metrics, rocs, (sum(accuracies) / len(accuracies) if accuracies else None)


def config_ijb_protocol(ev: Any) -> IJBProtocol:
    """The IJB protocol of an ``eval`` config section: ``ijb_protocol`` with the ``ijb_flip``,
    ``ijb_norm_score`` and ``ijb_detector_score`` that are set (null: the preset's)."""
    return ijb_protocol(
        ev.ijb_protocol,
        flip_mode=ev.ijb_flip,
        norm_score=ev.ijb_norm_score,
        detector_score=ev.ijb_detector_score,
    )


def protocol_record(
    precision: str | EvalPrecision,
    ijb: IJBProtocol | None = None,
    *,
    flip: bool = True,
    n_folds: int = 10,
    rule: str = "nearest",
    templates: TemplateProtocol | None = None,
) -> dict[str, Any]:
    """``results.json``'s ``eval_protocol``: the embedding precision, the pair-set protocol (flip sum
    or not, folds), the IJB protocol with its TPR reading (None when IJB was not evaluated) and, when
    template sets were scored, their protocol (``templates``: ``TemplateProtocol.to_dict()``)."""
    return {
        "precision": parse_precision(precision).value,
        "pair_sets": {"flip": "sum" if flip else "none", "n_folds": n_folds},
        "ijb": None if ijb is None else {**ijb.to_dict(), "tpr_rule": rule},
        # only when a template set was scored, so that records without one keep their earlier shape
        **({} if templates is None else {"templates": templates.to_dict()}),
    }
