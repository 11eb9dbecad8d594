"""IJB-style 1:1 template verification at low FPR, all-vs-all, scored by chunked matrix products.

A template set (``ekd.data.templates``: images, each in one template, each template of one subject;
the synthetic benchmark's ``synth_ijb.npz``) is scored like IJB-B/C's 1:1 protocol (``ekd.eval.ijb``)
with every unordered pair of templates as a comparison:

1. Image feature: the embedding of the image (fp32 unless ``precision`` says otherwise), by default
   of the image only (``flip_mode="plain"``), L2-normalised: TFace's IJB evaluation, behind the EKD
   paper's IJB-B/C columns (``ekd.eval.ijb``'s ``tface`` protocol: plain view, ``norm_score`` off, no
   detector score), at one forward pass per image. Any :func:`ekd.eval.ijb.fuse_views` mode may be
   asked for instead, e.g. ``sum``, f(x) + f(flip x), the flip sum of the pair sets and of insightface
   (twice the embedding time).
2. Template feature: :func:`ekd.eval.ijb.template_features` with one media per image (unless the file
   gives media ids), i.e. the mean of the template's normalised image features, L2-normalised.
3. Comparisons: all T (T - 1) / 2 unordered pairs of templates; genuine when both have the same
   subject, impostor otherwise. Score = cosine of the template features (float64).
4. TPR at FPR 1e-3, 1e-4, 1e-5 (``fprs``), read off the ROC by ``rule`` exactly as
   :func:`ekd.eval.metrics.tpr_at_fpr` reads it (default ``"nearest"``, the rule of ekd's IJB-B/C
   columns: the ROC point, after scikit-learn's ``drop_intermediate`` pruning, whose FPR is nearest
   the target, ties to the larger TPR; ``"le"``: the best TPR at FPR <= target). A threshold is
   reported only where the impostors give it at least ``min_false_accepts`` (10) false accepts:
   target x impostors >= 10; otherwise the TPR is null (NaN). With the synthetic defaults (1,121,250
   impostors) that is 1e-3 (about 1,121 false accepts), 1e-4 (112) and 1e-5 (11).

Scoring never holds the T x T score matrix: rows of templates are multiplied with the templates after
them in blocks of at most ``block_entries`` scores (default 2^20, 8 MiB of float64); every genuine
score is kept (one per pair of templates of a subject: few), and of the impostor scores only a count
and the K largest (``np.partition`` per block, merged), with K = 2 x (largest target x impostors) + 64.
:func:`ekd.eval.metrics.partial_roc_curve` builds the exact top of the ROC from those (every point
whose threshold is above the K-th largest impostor score), and :func:`ekd.eval.metrics.operating_point`
reads it. The reading is exact when m, the number of kept impostor scores above the smallest kept one,
is at least 2 x target x impostors + 2 for every reported target: every ROC point beyond the kept top
then has an FPR more than twice the target, farther from it than the (0, 0) point ("nearest") and
above it ("le"), so neither reading can land there. Ties at the K-th score (a collapsed network: many
equal scores) can break that; K is then quadrupled and the set rescored, up to keeping every impostor
score (exact by construction). ``tests/eval/test_templates.py`` checks the result against a brute-force
count over the full float64 score matrix.

A backbone whose features are not finite (a diverged run) gives None (the results-file error entry,
``ekd.eval.evaluate.result_record``) with a warning, as the pair sets do.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ekd.choices import EvalPrecision, FlipMode, parse_choice
from ekd.data.templates import TemplateSet, read_template_set
from ekd.eval import metrics
from ekd.eval.embed import as_embedder, extract_embeddings, parse_precision
from ekd.eval.ijb import fuse_views, template_features

#: The FPRs reported for template sets (those of the IJB-B/C columns that a million impostors resolve).
TEMPLATE_FPRS: tuple[float, ...] = (1e-3, 1e-4, 1e-5)
#: A TPR@FPR is reported only where target x impostors >= this many false accepts define the threshold.
MIN_FALSE_ACCEPTS = 10
#: Scores per block of the chunked all-vs-all product (2^20 float64: 8 MiB).
BLOCK_ENTRIES = 1 << 20
#: Images decoded and embedded at a time.
IMAGE_CHUNK = 1024


@dataclass(frozen=True)
class TemplateProtocol:
    """How a template set is scored (module docstring): image fusion, TPR reading, reporting rule."""

    flip_mode: FlipMode = FlipMode.plain
    rule: str = "nearest"
    min_false_accepts: int = MIN_FALSE_ACCEPTS
    fprs: tuple[float, ...] = TEMPLATE_FPRS

    def __post_init__(self) -> None:
        object.__setattr__(self, "flip_mode", parse_choice(FlipMode, self.flip_mode, "flip_mode"))
        metrics.check_rule(self.rule)
        if not isinstance(self.min_false_accepts, int) or self.min_false_accepts < 1:
            raise ValueError(f"min_false_accepts must be a positive integer, got {self.min_false_accepts!r}")
        object.__setattr__(self, "fprs", tuple(float(f) for f in self.fprs))
        for target in self.fprs:
            if not 0.0 < target <= 1.0:
                raise ValueError(f"target FPR must be in (0, 1], got {target}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (``eval_protocol["templates"]`` of results.json)."""
        return {
            "flip_mode": self.flip_mode.value,
            "image_feature": "L2-normalised",
            "template_feature": "mean of the image features, L2-normalised",
            "comparisons": "all-vs-all template pairs (same subject: genuine)",
            "scoring": "cosine, chunked matrix products, top impostor scores kept",
            "tpr_rule": self.rule,
            "fprs": [metrics.fpr_key(f) for f in self.fprs],
            "min_false_accepts": self.min_false_accepts,
        }


def template_protocol(flip_mode: str | FlipMode | None = None, rule: str = "nearest") -> TemplateProtocol:
    """The protocol of a run: image features by ``flip_mode`` (None: ``plain``, TFace's), read by ``rule``."""
    return TemplateProtocol(flip_mode=FlipMode.plain if flip_mode is None else flip_mode, rule=rule)


@dataclass
class TemplateScores:
    """What the chunked all-vs-all pass keeps: every genuine score, the impostor count and the
    ``top_impostors`` largest impostor scores (all of them when ``exact``)."""

    genuine: np.ndarray
    top_impostors: np.ndarray
    impostors: int

    @property
    def exact(self) -> bool:
        return self.top_impostors.size == self.impostors


@dataclass
class TemplateResult:
    """Outcome of :func:`score_templates` / :func:`evaluate_templates`; rates are fractions.

    ``tpr_at_fpr``: NaN where the target is not reported (target x impostors < ``min_false_accepts``,
    or no genuine comparison); ``false_accepts`` / ``thresholds``: the impostors accepted at, and the
    score of, the ROC point read for each target (None where not reported; threshold None for the
    (0, 0) point).
    """

    name: str
    tpr_at_fpr: dict[float, float]
    false_accepts: dict[float, int | None]
    thresholds: dict[float, float | None]
    genuine: int
    impostors: int
    num_templates: int
    num_subjects: int
    num_images: int | None = None
    kept_impostor_scores: int = 0
    protocol: TemplateProtocol = field(default_factory=TemplateProtocol)
    precision: str = EvalPrecision.fp32.value

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (the ``metrics`` entry of results.json); NaN becomes None."""

        def keyed(values: dict[float, Any]) -> dict[str, Any]:
            return {
                metrics.fpr_key(k): None if v is None or (isinstance(v, float) and math.isnan(v)) else v
                for k, v in values.items()
            }

        return {
            "name": self.name,
            "tpr_at_fpr": keyed(self.tpr_at_fpr),
            "false_accepts": keyed(self.false_accepts),
            "thresholds": keyed(self.thresholds),
            "impostors": self.impostors,
            "genuine": self.genuine,
            "num_pairs": self.impostors + self.genuine,
            "num_positives": self.genuine,
            "num_negatives": self.impostors,
            "num_templates": self.num_templates,
            "num_subjects": self.num_subjects,
            "num_images": self.num_images,
            "tpr_rule": self.protocol.rule,
            "min_false_accepts": self.protocol.min_false_accepts,
            "protocol": self.protocol.to_dict(),
            "precision": self.precision,
        }


# ----------------------------------------------------------------------------------------------
# scoring


def _largest(values: np.ndarray, k: int) -> np.ndarray:
    return values if values.size <= k else np.partition(values, values.size - k)[values.size - k :]


def all_vs_all_scores(
    features: np.ndarray, subjects: np.ndarray, keep: int, block_entries: int = BLOCK_ENTRIES
) -> TemplateScores:
    """Cosine scores of every unordered pair of (L2-normalised) template ``features`` by chunked
    matrix products: all genuine scores, the impostor count and the ``keep`` largest impostor scores."""
    features = np.ascontiguousarray(features, dtype=np.float64)
    subjects = np.asarray(subjects)
    count = features.shape[0]
    if subjects.shape != (count,):
        raise ValueError(f"{subjects.shape} subjects for {count} templates")
    rows = max(1, block_entries // max(count, 1))
    genuine_parts: list[np.ndarray] = []
    top = np.empty(0, dtype=np.float64)
    impostors = 0
    for r0 in range(0, count - 1, rows):
        r1 = min(count - 1, r0 + rows)
        # rows r0..r1-1 against the templates after r0: entry (i, j) is the pair (r0 + i, r0 + 1 + j),
        # a pair of distinct templates counted once where j >= i
        block = features[r0:r1] @ features[r0 + 1 :].T
        upper = np.arange(r1 - r0)[:, None] <= np.arange(count - r0 - 1)[None, :]
        same = subjects[r0:r1, None] == subjects[None, r0 + 1 :]
        genuine_parts.append(block[upper & same])
        impostor = block[upper & ~same]
        impostors += impostor.size
        top = _largest(np.concatenate([top, _largest(impostor, keep)]), keep)
    genuine = np.concatenate(genuine_parts) if genuine_parts else np.empty(0, dtype=np.float64)
    return TemplateScores(genuine=genuine, top_impostors=np.sort(top)[::-1], impostors=impostors)


def _resolved(scores: TemplateScores, needed: float) -> bool:
    """Whether the kept top of the impostor scores fixes every reading (module docstring)."""
    if scores.exact:
        return True
    top = scores.top_impostors
    above = int(np.count_nonzero(top > top.min()))
    return above >= 2.0 * needed + 2.0


def score_templates(
    features: np.ndarray,
    subjects: np.ndarray,
    protocol: TemplateProtocol | None = None,
    *,
    name: str = "templates",
    block_entries: int = BLOCK_ENTRIES,
    keep: int | None = None,
) -> TemplateResult:
    """TPR at the protocol's FPRs of L2-normalised template ``features`` (T x D) with their
    ``subjects`` (T), all-vs-all (module docstring). ``keep``: how many impostor scores to keep at
    first (default 2 x largest target x impostors + 64; for tests)."""
    protocol = protocol or TemplateProtocol()
    features = np.asarray(features, dtype=np.float64)
    subjects = np.asarray(subjects)
    count = features.shape[0]
    genuine_count = sum(int(c) * (int(c) - 1) // 2 for c in np.unique(subjects, return_counts=True)[1])
    impostor_count = count * (count - 1) // 2 - genuine_count
    reported = [
        t for t in protocol.fprs if genuine_count > 0 and t * impostor_count >= protocol.min_false_accepts
    ]
    needed = max(reported, default=0.0) * impostor_count  # false accepts at the largest reported FPR
    if keep is None:
        keep = 2 * math.ceil(needed) + 64
    keep = int(min(max(keep, 1), max(impostor_count, 1)))
    while True:
        scores = all_vs_all_scores(features, subjects, keep, block_entries)
        if _resolved(scores, needed):
            break
        keep = min(4 * keep, scores.impostors)  # ties at the smallest kept score: keep more
    assert scores.impostors == impostor_count and scores.genuine.size == genuine_count
    tprs: dict[float, float] = {}
    accepts: dict[float, int | None] = {}
    thresholds: dict[float, float | None] = {}
    roc = None
    if reported:
        roc = metrics.partial_roc_curve(
            scores.genuine, scores.top_impostors, impostor_count, drop_intermediate=protocol.rule == "nearest"
        )
    for target in protocol.fprs:
        idx = metrics.operating_point(roc, target, protocol.rule) if target in reported else None
        if idx is None:
            tprs[target], accepts[target], thresholds[target] = float("nan"), None, None
            continue
        tprs[target] = float(roc.tpr[idx])
        accepts[target] = int(roc.fps[idx])
        threshold = float(roc.thresholds[idx])
        thresholds[target] = threshold if math.isfinite(threshold) else None
    return TemplateResult(
        name=name,
        tpr_at_fpr=tprs,
        false_accepts=accepts,
        thresholds=thresholds,
        genuine=genuine_count,
        impostors=impostor_count,
        num_templates=count,
        num_subjects=int(np.unique(subjects).size),
        kept_impostor_scores=int(scores.top_impostors.size),
        protocol=protocol,
    )


# ----------------------------------------------------------------------------------------------
# embedding


def image_features(
    model: Any,
    template_set: TemplateSet,
    batch_size: int = 256,
    flip_mode: str | FlipMode = FlipMode.plain,
    precision: str | EvalPrecision = EvalPrecision.fp32,
    chunk: int = IMAGE_CHUNK,
) -> np.ndarray:
    """Per-image features (float64, fused by ``flip_mode``, not normalised) of every image of the set,
    decoded and embedded ``chunk`` images at a time."""
    flip_mode = parse_choice(FlipMode, flip_mode, "flip_mode")
    # build an ONNX session once, not per chunk; a torch module stays a module (eval-mode handling)
    runner = model if isinstance(model, nn.Module) else as_embedder(model)
    parts = []
    for start in range(0, len(template_set), chunk):
        images = template_set.images(start, start + chunk)
        plain = extract_embeddings(runner, images, batch_size, flip=False, precision=precision).raw
        flipped = None
        if flip_mode != FlipMode.plain:  # "plain" never looks at the mirror: not embedded
            mirrored = torch.flip(images, dims=[3])
            flipped = extract_embeddings(
                runner, mirrored, batch_size, flip=False, precision=precision
            ).raw.numpy()
        parts.append(fuse_views(plain.numpy(), flipped, flip_mode))
    return np.concatenate(parts)


def template_set_features(template_set: TemplateSet, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(L2-normalised template features T x D, subject of each template) from per-image features:
    each image feature L2-normalised, then :func:`ekd.eval.ijb.template_features` (mean per media, sum
    of media, L2-normalised)."""
    features = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    unique, feats = template_features(features / norms, template_set.templates, template_set.medias)
    ids, subjects = template_set.template_subjects()
    assert np.array_equal(unique, ids)
    return feats, subjects


def evaluate_templates(
    model: Any,
    template_set: TemplateSet | str | os.PathLike,
    batch_size: int = 256,
    protocol: TemplateProtocol | None = None,
    precision: str | EvalPrecision = EvalPrecision.fp32,
    *,
    name: str | None = None,
) -> TemplateResult | None:
    """Embed and score a template set (a :class:`~ekd.data.templates.TemplateSet` or its file) with
    ``model`` (an nn.Module, ONNX path or session, or a batch function); None, with a warning, when
    the features are not finite."""
    protocol = protocol or TemplateProtocol()
    precision = parse_precision(precision)
    if not isinstance(template_set, TemplateSet):
        template_set = read_template_set(Path(template_set))
    name = name or template_set.name
    features = image_features(model, template_set, batch_size, protocol.flip_mode, precision)
    if not np.isfinite(features).all():
        warnings.warn(f"template set {name}: the backbone produces non-finite embeddings", stacklevel=2)
        return None
    template_feats, subjects = template_set_features(template_set, features)
    result = score_templates(template_feats, subjects, protocol, name=name)
    result.num_images = len(template_set)
    result.precision = precision.value
    return result


def evaluate_template_files(
    model: Any,
    paths: Iterable[tuple[str, str | os.PathLike]],
    batch_size: int,
    protocol: TemplateProtocol | None = None,
    precision: str | EvalPrecision = EvalPrecision.fp32,
) -> dict[str, TemplateResult | None]:
    """:func:`evaluate_templates` of each ``(name, path)``, read one at a time."""
    return {
        str(name): evaluate_templates(model, path, batch_size, protocol, precision, name=str(name))
        for name, path in paths
    }
