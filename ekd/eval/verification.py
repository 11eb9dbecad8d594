"""The LFW-style pair-verification protocol as insightface reports it (lfw, cfp_fp, agedb_30, ...).

Given 2N embeddings where pair i is rows (2i, 2i+1) and N same/different labels:

1. L2-normalise every embedding; distance d_i = ||e_2i - e_2i+1||^2 (squared L2, in [0, 4]).
2. Thresholds t in ``np.arange(0, 4, 0.01)``; a pair is predicted "same" when d < t.
3. 10 contiguous folds without shuffling; like scikit-learn's ``KFold(n_splits=10, shuffle=False)``
   the first ``N % 10`` folds hold one pair more than the others.
4. Per fold: the threshold with the best accuracy on the other 9 folds (ties -> the smallest
   threshold, as ``np.argmax`` picks), then the accuracy of the held-out fold at that threshold.
5. accuracy = mean of the fold accuracies, accuracy_std = their population std (ddof 0).

VAL@FAR (insightface ``calculate_val``): thresholds ``np.arange(0, 4, 0.001)``; per fold, the
threshold whose FAR on the other folds equals the target is found by linear interpolation of
threshold against FAR; VAL and FAR are then measured on the held-out fold. insightface calls
``scipy.interpolate.interp1d(far, thresholds, kind='slinear')``, which fails or divides by zero when
the FAR curve is flat (always, in practice: FAR is a step function of the threshold). Here each
distinct FAR value keeps its smallest threshold before interpolating, which is exactly
``interp1d`` wherever the FAR values are distinct and well defined where they are not. When no
threshold reaches the target FAR, the threshold is 0 (nothing accepted), as in insightface.

TPR@FPR, AUC and EER come from the ROC over all pairs with score = cosine similarity
(``ekd.eval.metrics``); targets below 1 / num_negatives are NaN (None in ``to_dict``), e.g. with
3000 impostor pairs only 1e-1, 1e-2 and 1e-3 are resolvable.

All counting is vectorised: per fold, the sorted distances are searched for every threshold at once
(``np.searchsorted``), so the protocol costs O(N log N + folds x thresholds).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ekd.eval import metrics

ACCURACY_THRESHOLDS: np.ndarray = np.arange(0, 4, 0.01)
VAL_THRESHOLDS: np.ndarray = np.arange(0, 4, 0.001)
VAL_FAR_TARGET: float = 1e-3


def kfold_bounds(num_items: int, n_folds: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, end)`` folds, sized like scikit-learn's unshuffled ``KFold``."""
    if n_folds < 1:
        raise ValueError(f"n_folds must be >= 1, got {n_folds}")
    if num_items < n_folds:
        raise ValueError(f"cannot split {num_items} pairs into {n_folds} folds (need at least one per fold)")
    sizes = np.full(n_folds, num_items // n_folds, dtype=np.int64)
    sizes[: num_items % n_folds] += 1
    ends = np.cumsum(sizes)
    return [(int(e - s), int(e)) for s, e in zip(sizes, ends)]


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float64; all-zero rows stay zero (as sklearn.preprocessing.normalize)."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    norms[norms == 0] = 1.0
    return x / norms[:, None]


def pair_distances(embeddings: np.ndarray | torch.Tensor, chunk: int = 1024) -> np.ndarray:
    """Squared L2 distance of each pair (rows 2i, 2i+1) after L2 normalisation, in float64.

    Works through ``chunk`` pairs at a time so the temporaries stay in cache (the arithmetic per
    pair, and so the result, does not depend on the chunking).
    """
    emb = _check_embeddings(embeddings)
    num_pairs = emb.shape[0] // 2
    out = np.empty(num_pairs, dtype=np.float64)
    for start in range(0, num_pairs, chunk):
        rows = np.asarray(emb[2 * start : 2 * min(start + chunk, num_pairs)], dtype=np.float64)
        if not np.all(np.isfinite(rows)):
            bad = int(np.argwhere(~np.isfinite(rows))[0, 0]) + 2 * start
            raise ValueError(f"embeddings contain non-finite values (first in row {bad})")
        normed = l2_normalize(rows)
        out[start : start + chunk] = np.sum(np.square(normed[0::2] - normed[1::2]), axis=1)
    return out


def _check_embeddings(embeddings: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.detach().cpu()
        if not embeddings.is_floating_point() or embeddings.dtype in (torch.float16, torch.bfloat16):
            embeddings = embeddings.double()
        embeddings = embeddings.numpy()
    emb = np.asarray(embeddings)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be 2N x D, got shape {emb.shape}")
    if emb.shape[0] % 2:
        raise ValueError(f"embeddings must have an even number of rows (pairs 2i, 2i+1), got {emb.shape[0]}")
    if emb.shape[0] == 0:
        raise ValueError("embeddings are empty: need at least one pair")
    if not np.issubdtype(emb.dtype, np.number):
        raise ValueError(f"embeddings must be numeric, got dtype {emb.dtype}")
    return emb


def _fold_counts_below(
    dist: np.ndarray, mask: np.ndarray, bounds: list[tuple[int, int]], thresholds: np.ndarray
) -> np.ndarray:
    """counts[k, j] = number of pairs of fold k selected by ``mask`` with distance < thresholds[j]."""
    counts = np.empty((len(bounds), thresholds.size), dtype=np.int64)
    for k, (start, end) in enumerate(bounds):  # a loop over the folds only, never over thresholds
        selected = np.sort(dist[start:end][mask[start:end]])
        counts[k] = np.searchsorted(selected, thresholds, side="left")
    return counts


def _folds_train_test(counts: np.ndarray, n_folds: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) counts per fold; with one fold train = test (insightface's LFold(n_splits=1))."""
    if n_folds == 1:
        return counts, counts
    return counts.sum(axis=0, keepdims=True) - counts, counts


@dataclass
class VerificationResult:
    """Outcome of :func:`verify` on one pair set. Rates are fractions in [0, 1]."""

    accuracy: float
    accuracy_std: float
    fold_accuracies: list[float]
    best_thresholds: list[float]
    tpr_at_fpr: dict[float, float]
    val_at_far: float
    val_std: float
    far: float
    auc: float
    eer: float
    num_pairs: int
    num_positives: int
    num_negatives: int
    xnorm: float | None = None
    # ROC over all pairs (FPR, TPR), for plots; not part of to_dict()
    roc_fpr: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    roc_tpr: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    def to_dict(self) -> dict:
        """JSON-ready dictionary; NaN becomes None and FPR keys become text like ``"1e-4"``."""
        data = asdict(self)
        data.pop("roc_fpr")
        data.pop("roc_tpr")
        data["tpr_at_fpr"] = {metrics.fpr_key(k): _none_if_nan(v) for k, v in self.tpr_at_fpr.items()}
        data["val_far_target"] = VAL_FAR_TARGET
        for key in ("accuracy", "accuracy_std", "val_at_far", "val_std", "far", "auc", "eer", "xnorm"):
            data[key] = _none_if_nan(data[key])
        return data


def _none_if_nan(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def verify(
    embeddings: np.ndarray | torch.Tensor,
    issame: Sequence[bool] | np.ndarray | torch.Tensor,
    n_folds: int = 10,
    fprs: Iterable[float] = metrics.FPR_TARGETS,
    xnorm: float | None = None,
) -> VerificationResult:
    """Run the verification protocol (module docstring) on 2N embeddings and N pair labels."""
    dist = pair_distances(embeddings)
    if isinstance(issame, torch.Tensor):
        issame = issame.cpu().numpy()
    same = np.asarray(issame)
    if same.ndim != 1 or same.size != dist.size:
        raise ValueError(
            f"issame must hold one label per pair: {dist.size} pairs from {2 * dist.size} embeddings, "
            f"got labels of shape {same.shape}"
        )
    if same.dtype != bool:
        if not np.all(np.isin(same, [0, 1])):
            raise ValueError(f"issame must be boolean or 0/1, got values {np.unique(same)[:10].tolist()}")
        same = same.astype(bool)
    diff = ~same
    bounds = kfold_bounds(dist.size, n_folds)
    fold_acc, best = fold_accuracies(dist, same, n_folds)
    val, val_std, far = _val_at_far(dist, same, bounds, VAL_FAR_TARGET)

    similarity = 1.0 - dist / 2.0  # cosine of the normalised pair, monotone in -distance
    roc = metrics.roc_curve(same, similarity)
    return VerificationResult(
        accuracy=float(np.mean(fold_acc)),
        accuracy_std=float(np.std(fold_acc)),
        fold_accuracies=[float(a) for a in fold_acc],
        best_thresholds=[float(ACCURACY_THRESHOLDS[j]) for j in best],
        tpr_at_fpr=metrics.tpr_at_fpr(same, similarity, fprs),
        val_at_far=val,
        val_std=val_std,
        far=far,
        auc=metrics.auc(same, similarity),
        eer=metrics.eer(same, similarity),
        num_pairs=int(dist.size),
        num_positives=int(same.sum()),
        num_negatives=int(diff.sum()),
        xnorm=xnorm,
        roc_fpr=roc.fpr,
        roc_tpr=roc.tpr,
    )


def fold_accuracies(dist: np.ndarray, issame: np.ndarray, n_folds: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Held-out accuracy of each fold and the index into ``ACCURACY_THRESHOLDS`` chosen for it.

    ``dist``: squared distances of the N pairs; ``issame``: N booleans (steps 2-4 of the protocol).
    """
    same = np.asarray(issame, dtype=bool)
    diff = ~same
    bounds = kfold_bounds(dist.size, n_folds)
    fold_sizes = np.array([end - start for start, end in bounds], dtype=np.int64)
    # correct(t) = #same with d < t + #diff with d >= t, per fold and threshold
    same_below = _fold_counts_below(dist, same, bounds, ACCURACY_THRESHOLDS)
    diff_below = _fold_counts_below(dist, diff, bounds, ACCURACY_THRESHOLDS)
    diff_total = np.array([diff[s:e].sum() for s, e in bounds], dtype=np.int64)[:, None]
    correct = same_below + (diff_total - diff_below)
    train_correct, test_correct = _folds_train_test(correct, n_folds)
    # the train size is constant per fold, so argmax over counts = argmax over accuracies (first max)
    best = np.argmax(train_correct, axis=1)
    return test_correct[np.arange(n_folds), best] / fold_sizes, best


def interpolate_threshold(far: np.ndarray, thresholds: np.ndarray, far_target: float) -> float:
    """Threshold at which the (non-decreasing) FAR curve reaches ``far_target``; 0 if it never does.

    Each distinct FAR keeps its smallest threshold, then linear interpolation (see module docstring).
    """
    if not np.max(far) >= far_target:  # also catches an all-NaN curve (no impostor pairs)
        return 0.0
    far_unique, first = np.unique(far, return_index=True)
    return float(np.interp(far_target, far_unique, thresholds[first]))


def _val_at_far(
    dist: np.ndarray, same: np.ndarray, bounds: list[tuple[int, int]], far_target: float
) -> tuple[float, float, float]:
    """insightface's 10-fold VAL@FAR (mean VAL, std VAL, mean FAR over the held-out folds)."""
    diff = ~same
    n_folds = len(bounds)
    diff_below = _fold_counts_below(dist, diff, bounds, VAL_THRESHOLDS)
    diff_total = np.array([diff[s:e].sum() for s, e in bounds], dtype=np.int64)
    train_below, _ = _folds_train_test(diff_below, n_folds)
    train_total = diff_total.sum() - diff_total if n_folds > 1 else diff_total
    vals, fars = np.empty(n_folds), np.empty(n_folds)
    for k, (start, end) in enumerate(bounds):
        with np.errstate(invalid="ignore", divide="ignore"):
            far_train = (
                train_below[k] / train_total[k] if train_total[k] else np.full(VAL_THRESHOLDS.size, np.nan)
            )
        threshold = interpolate_threshold(far_train, VAL_THRESHOLDS, far_target)
        accepted = dist[start:end] < threshold
        n_same, n_diff = same[start:end].sum(), diff[start:end].sum()
        vals[k] = np.sum(accepted & same[start:end]) / n_same if n_same else np.nan
        fars[k] = np.sum(accepted & diff[start:end]) / n_diff if n_diff else np.nan
    return float(np.mean(vals)), float(np.std(vals)), float(np.mean(fars))
