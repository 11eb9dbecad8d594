"""Score-based verification metrics: ROC curve, TPR at fixed FPR, AUC and EER.

Scores are similarities (higher = more likely the same identity); labels are 1 for genuine pairs
and 0 for impostor pairs. A pair is accepted at threshold ``t`` when ``score >= t``.

``roc_curve`` follows scikit-learn's ``roc_curve`` exactly (one ROC point per distinct score, the
optional ``drop_intermediate`` pruning of collinear points, a leading (0, 0) point with threshold
+inf), so insightface's IJB numbers, which are read off scikit-learn's curve, are reproduced without
depending on scikit-learn.

TPR at a target FPR has two readings in the field, both offered by :func:`tpr_at_fpr`:

* ``rule="le"`` (default): the largest TPR over operating points whose FPR does not exceed the
  target, i.e. the TPR of the threshold that admits at most ``floor(target * num_negatives)``
  impostor pairs.
* ``rule="nearest"``: insightface's IJB script (``ijb_11.py``): on scikit-learn's default ROC
  (``drop_intermediate=True``), the point whose FPR is nearest the target; ties go to the point with
  the larger TPR.

Either way, a target below ``1 / num_negatives`` cannot be resolved by the data (the only reachable
FPR is 0) and is reported as NaN rather than as a misleadingly precise number.

:func:`operating_point` is that reading (the index of the chosen ROC point, so callers can also
report its false accepts and threshold); :func:`partial_roc_curve` builds the exact top of a ROC from
all genuine scores and only the largest impostor scores (what ``ekd.eval.templates`` keeps of a
million impostor comparisons), which the same reading then uses.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

#: The FPR anchors reported throughout ekd (as in the IJB tables of insightface and the EKD paper).
FPR_TARGETS: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


def fpr_key(fpr: float) -> str:
    """Canonical text of an FPR in dictionaries, results files and logged metric names.

    Up to 3 significant digits, trailing zeros and exponent padding dropped: 1e-4 -> ``1e-4``,
    0.05 -> ``5e-2``, 1/3 -> ``3.33e-1``. The one formatter of ekd (verification results, IJB results,
    the callback's ``tpr@fpr=`` keys, EKD's ``tau_s@`` log keys), so every name of one FPR matches.
    """
    # 3 digits rather than 1: EKD anchors such as a = 3 (FPR 1/3) must not collide with a = 4 (2.5e-1)
    mantissa, exponent = f"{fpr:.2e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


@dataclass(frozen=True)
class RocCurve:
    """ROC points in order of decreasing threshold; ``fps`` / ``tps`` are the raw counts."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    fps: np.ndarray
    tps: np.ndarray
    num_positives: int
    num_negatives: int


def _check_scores(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray):
    labels_arr = np.asarray(labels)
    scores_arr = np.asarray(scores, dtype=np.float64)
    if labels_arr.ndim != 1 or scores_arr.ndim != 1 or labels_arr.shape != scores_arr.shape:
        raise ValueError(
            "labels and scores must be 1-D of equal length, got shapes "
            f"{labels_arr.shape} and {scores_arr.shape}"
        )
    if labels_arr.dtype != bool:
        unique = np.unique(labels_arr)
        if not np.all(np.isin(unique, [0, 1])):
            raise ValueError(f"labels must be 0/1 or boolean, got values {unique[:10].tolist()}")
    if not np.all(np.isfinite(scores_arr)):
        raise ValueError(f"scores contain {int(np.sum(~np.isfinite(scores_arr)))} non-finite values")
    return labels_arr.astype(bool), scores_arr


def roc_curve(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, drop_intermediate: bool = False
) -> RocCurve:
    """ROC curve with one point per distinct score (scikit-learn semantics, see module docstring).

    ``fpr`` is NaN when there are no negatives and ``tpr`` is NaN when there are no positives.
    """
    y, s = _check_scores(labels, scores)
    if y.size == 0:
        raise ValueError("roc_curve needs at least one scored pair")
    # mergesort + reversal: the same order scikit-learn uses, so pruning and ties match exactly
    order = np.argsort(s, kind="mergesort")[::-1]
    s = s[order]
    y = y[order]
    distinct = np.where(np.diff(s))[0]
    threshold_idx = np.r_[distinct, y.size - 1]
    tps = np.cumsum(y, dtype=np.int64)[threshold_idx]
    fps = 1 + threshold_idx - tps
    thresholds = s[threshold_idx]
    if drop_intermediate and fps.size > 2:
        # keep the end points and every corner (where the second difference is non-zero)
        keep = np.where(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])[0]
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    tps = np.r_[0, tps]
    fps = np.r_[0, fps]
    thresholds = np.r_[np.inf, thresholds]
    num_pos, num_neg = int(tps[-1]), int(fps[-1])
    with np.errstate(invalid="ignore", divide="ignore"):
        fpr = fps / num_neg if num_neg else np.full(fps.shape, np.nan)
        tpr = tps / num_pos if num_pos else np.full(tps.shape, np.nan)
    return RocCurve(fpr, tpr, thresholds, fps, tps, num_pos, num_neg)


def check_rule(rule: str) -> str:
    """``rule`` if it is a TPR@FPR reading (``"le"`` or ``"nearest"``), else ValueError."""
    if rule not in ("le", "nearest"):
        raise ValueError(f"tpr_at_fpr rule must be 'le' or 'nearest', got {rule!r}")
    return rule


def operating_point(roc: RocCurve, target: float, rule: str = "le") -> int | None:
    """Index into ``roc``'s arrays of the point read as "TPR at FPR ``target``" (module docstring);
    None where the target is unresolvable (target x negatives < 1, or no positives / negatives).

    ``roc`` must be the curve the rule reads: ``drop_intermediate=True`` for ``"nearest"``.
    """
    check_rule(rule)
    target = float(target)
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target FPR must be in (0, 1], got {target}")
    if roc.num_negatives == 0 or roc.num_positives == 0 or target * roc.num_negatives < 1.0:
        return None
    if rule == "le":
        # compare counts, not rounded rates: FPR <= target  <=>  fps <= target * num_negatives
        allowed = np.floor(target * roc.num_negatives * (1 + 1e-12))
        return int(np.searchsorted(roc.fps, allowed, side="right")) - 1
    # insightface: flip to decreasing FPR, first minimum of |fpr - target| -> larger TPR on ties
    fpr_flipped = roc.fpr[::-1]
    return roc.fpr.size - 1 - int(np.argmin(np.abs(fpr_flipped - target)))


def tpr_at_fpr(
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    fprs: Iterable[float] = FPR_TARGETS,
    rule: str = "le",
) -> dict[float, float]:
    """TPR at each target FPR (see the module docstring for ``rule``); NaN where unresolvable."""
    roc = roc_curve(labels, scores, drop_intermediate=(check_rule(rule) == "nearest"))
    out: dict[float, float] = {}
    for target in fprs:
        idx = operating_point(roc, target, rule)
        out[float(target)] = float("nan") if idx is None else float(roc.tpr[idx])
    return out


def partial_roc_curve(
    genuine: np.ndarray, top_impostors: np.ndarray, num_impostors: int, drop_intermediate: bool = False
) -> RocCurve:
    """The ROC of all ``genuine`` scores against ``num_impostors`` impostor scores of which only the
    largest, ``top_impostors``, are given: exactly the points of :func:`roc_curve` on all the scores
    whose threshold is above ``min(top_impostors)`` (all of them when every impostor score is given).

    With ``drop_intermediate`` the pruning of the last returned point may differ from the full curve's
    (it depends on the next point, which is not known); readers must not rely on that point
    (``ekd.eval.templates`` checks that its reading never lands there). ``fpr`` divides by
    ``num_impostors``; ``num_negatives`` is ``num_impostors``.
    """
    genuine = np.asarray(genuine, dtype=np.float64).ravel()
    top = np.asarray(top_impostors, dtype=np.float64).ravel()
    if top.size > num_impostors:
        raise ValueError(f"{top.size} top impostor scores of only {num_impostors} impostors")
    labels = np.r_[np.ones(genuine.size, dtype=bool), np.zeros(top.size, dtype=bool)]
    roc = roc_curve(labels, np.r_[genuine, top], drop_intermediate=drop_intermediate)
    keep = np.ones(roc.thresholds.size, dtype=bool)
    if top.size < num_impostors:
        # below the smallest kept impostor score the counts miss the impostors that were not kept
        keep = roc.thresholds > (top.min() if top.size else np.inf)
        keep[0] = True  # the (0, 0) point, threshold +inf
    fps, tps = roc.fps[keep], roc.tps[keep]
    with np.errstate(invalid="ignore", divide="ignore"):
        fpr = fps / num_impostors if num_impostors else np.full(fps.shape, np.nan)
        tpr = tps / genuine.size if genuine.size else np.full(tps.shape, np.nan)
    return RocCurve(fpr, tpr, roc.thresholds[keep], fps, tps, int(genuine.size), int(num_impostors))


def auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve (trapezoids; equals P(score_pos > score_neg) + 0.5 P(tie))."""
    roc = roc_curve(labels, scores)
    if roc.num_positives == 0 or roc.num_negatives == 0:
        return float("nan")
    return float(np.sum(np.diff(roc.fpr) * (roc.tpr[1:] + roc.tpr[:-1]) / 2.0))


def eer(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Equal error rate: the FPR where FPR = FNR = 1 - TPR, linearly interpolated along the ROC."""
    roc = roc_curve(labels, scores)
    if roc.num_positives == 0 or roc.num_negatives == 0:
        return float("nan")
    # gap = FPR - FNR is non-decreasing along the curve, from -1 at (0, 0) to +1 at (1, 1)
    gap = roc.fpr - (1.0 - roc.tpr)
    i = int(np.argmax(gap >= 0))
    if i == 0:
        return float(roc.fpr[0])
    t = -gap[i - 1] / (gap[i] - gap[i - 1])
    return float(roc.fpr[i - 1] + t * (roc.fpr[i] - roc.fpr[i - 1]))


def downsample_roc(fpr: np.ndarray, tpr: np.ndarray, points: int | None) -> dict[str, list[float]]:
    """At most ``points`` ROC points, spread evenly in log10(FPR) (where face verification is read).

    The first and last points are kept; for each target FPR the largest TPR at FPR <= target is
    taken, so the down-sampled curve never lies above the full one. These are the ``roc`` curves of
    ``results.json`` and ``eval_results.json``. ``points=None`` keeps every point.
    """
    fpr = np.asarray(fpr, dtype=np.float64)
    tpr = np.asarray(tpr, dtype=np.float64)
    if points is None or fpr.size <= points:
        return {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
    positive = fpr[fpr > 0]
    low = positive.min() if positive.size else 1e-6
    targets = np.unique(np.concatenate([[0.0], np.logspace(np.log10(low), 0.0, points - 1)]))
    running_max = np.maximum.accumulate(tpr)  # ROC points come in increasing FPR order
    index = np.searchsorted(fpr, targets, side="right") - 1
    index = np.clip(index, 0, fpr.size - 1)
    return {"fpr": targets.tolist(), "tpr": running_max[index].tolist()}
