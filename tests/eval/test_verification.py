"""The pair-verification protocol against a plain loop re-statement of insightface's evaluate()."""

import math

import numpy as np
import pytest
import torch

from ekd.eval import verification
from ekd.eval.verification import interpolate_threshold, kfold_bounds, verify


def _reference_folds(n, n_folds):
    """scikit-learn KFold(n_splits, shuffle=False): the first n % n_folds folds get one more item."""
    folds, start = [], 0
    for k in range(n_folds):
        size = n // n_folds + (1 if k < n % n_folds else 0)
        folds.append(list(range(start, start + size)))
        start += size
    return folds


def _reference_distances(emb):
    emb = np.asarray(emb, dtype=np.float64)
    normed = np.array([row / math.sqrt(sum(v * v for v in row)) for row in emb])
    return np.sum(np.square(normed[0::2] - normed[1::2]), axis=1)


def _reference_accuracy(dist, issame, n_folds=10):
    """insightface calculate_roc with explicit loops over folds and thresholds."""
    thresholds = np.arange(0, 4, 0.01)
    n = len(issame)
    fold_acc, best_t = [], []
    for test in _reference_folds(n, n_folds):
        test_set = set(test)
        train = [i for i in range(n) if i not in test_set]
        d_train, s_train = dist[train], issame[train]
        acc_train = np.zeros(len(thresholds))
        for j, t in enumerate(thresholds):
            pred = d_train < t
            tp = np.sum(pred & s_train)
            tn = np.sum(~pred & ~s_train)
            acc_train[j] = float(tp + tn) / len(train)
        best = int(np.argmax(acc_train))
        pred = dist[test] < thresholds[best]
        fold_acc.append(float(np.sum(pred == issame[test])) / len(test))
        best_t.append(thresholds[best])
    return fold_acc, best_t


def _reference_val(dist, issame, far_target=1e-3, n_folds=10):
    """insightface calculate_val, loops over thresholds, with the documented duplicate-FAR rule."""
    thresholds = np.arange(0, 4, 0.001)
    n = len(issame)
    vals, fars = [], []
    for test in _reference_folds(n, n_folds):
        test_set = set(test)
        train = [i for i in range(n) if i not in test_set]
        d_train, s_train = dist[train], issame[train]
        far_train = np.array([np.sum((d_train < t) & ~s_train) / np.sum(~s_train) for t in thresholds])
        if far_train.max() >= far_target:
            xs, ys = [], []
            for far, t in zip(far_train, thresholds):  # first (smallest) threshold of each FAR value
                if not xs or far != xs[-1]:
                    xs.append(far)
                    ys.append(t)
            # linear interpolation by hand between the bracketing points
            k = next(i for i, x in enumerate(xs) if x >= far_target)
            if xs[k] == far_target:
                threshold = ys[k]
            else:
                threshold = ys[k - 1] + (far_target - xs[k - 1]) * (ys[k] - ys[k - 1]) / (xs[k] - xs[k - 1])
        else:
            threshold = 0.0
        pred = dist[test] < threshold
        vals.append(np.sum(pred & issame[test]) / np.sum(issame[test]))
        fars.append(np.sum(pred & ~issame[test]) / np.sum(~issame[test]))
    return np.mean(vals), np.std(vals), np.mean(fars)


def _random_pairs(n_pairs, dim=16, noise=0.9, seed=0):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(2 * n_pairs, dim))
    issame = rng.random(n_pairs) < 0.5
    emb[1::2][issame] = emb[0::2][issame] + noise * rng.normal(size=(int(issame.sum()), dim))
    return emb.astype(np.float32), issame


@pytest.mark.parametrize("n_pairs", [6000, 7000, 503])
def test_accuracy_matches_loop_reference(n_pairs):
    emb, issame = _random_pairs(n_pairs, seed=n_pairs)
    result = verify(emb, issame)
    ref_acc, ref_t = _reference_accuracy(_reference_distances(emb), issame)
    assert result.fold_accuracies == ref_acc  # exact: same integer counts, same divisions
    assert result.best_thresholds == [float(t) for t in ref_t]
    assert result.accuracy == pytest.approx(np.mean(ref_acc), abs=1e-15)
    assert result.accuracy_std == pytest.approx(np.std(ref_acc), abs=1e-15)
    assert 0.7 < result.accuracy < 1.0  # a non-trivial operating point was exercised
    assert result.num_pairs == n_pairs and result.num_positives == int(issame.sum())


@pytest.mark.parametrize("n_pairs", [503, 2000])
def test_val_at_far_matches_loop_reference(n_pairs):
    emb, issame = _random_pairs(n_pairs, noise=0.6, seed=7)
    result = verify(emb, issame)
    val, val_std, far = _reference_val(_reference_distances(emb), issame)
    assert result.val_at_far == pytest.approx(val, abs=1e-12)
    assert result.val_std == pytest.approx(val_std, abs=1e-12)
    assert result.far == pytest.approx(far, abs=1e-12)
    assert result.val_at_far > 0


def test_kfold_bounds_like_sklearn():
    assert kfold_bounds(503, 10) == [(0, 51), (51, 102), (102, 153)] + [
        (153 + 50 * i, 203 + 50 * i) for i in range(7)
    ]
    assert kfold_bounds(6000, 10)[-1] == (5400, 6000)
    assert kfold_bounds(10, 10) == [(i, i + 1) for i in range(10)]
    with pytest.raises(ValueError, match="cannot split 9 pairs into 10 folds"):
        kfold_bounds(9, 10)


def test_interpolate_threshold_handles_duplicate_far():
    far = np.array([0.0, 0.0, 0.001, 0.002, 0.002, 0.004])
    thresholds = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    assert interpolate_threshold(far, thresholds, 0.003) == pytest.approx(
        4.0
    )  # between (.002, 3) and (.004, 5)
    assert interpolate_threshold(far, thresholds, 0.001) == pytest.approx(2.0)
    assert interpolate_threshold(far, thresholds, 0.01) == 0.0  # target never reached


def test_interpolate_threshold_equals_scipy_slinear_on_distinct_far():
    interpolate = pytest.importorskip("scipy.interpolate")
    far = np.array([0.0, 0.0005, 0.0012, 0.002, 0.004])
    thresholds = np.array([0.1, 0.4, 0.45, 0.9, 1.3])
    expected = float(interpolate.interp1d(far, thresholds, kind="slinear")(1e-3))
    assert interpolate_threshold(far, thresholds, 1e-3) == pytest.approx(expected, abs=1e-12)


def test_perfect_separation():
    n = 200
    emb = np.eye(2 * n)  # orthogonal rows: different pairs at squared distance 2
    issame = np.arange(n) % 2 == 0
    emb[1::2][issame] = emb[0::2][issame] * 3.0  # same direction (scale is normalised away)
    result = verify(emb, issame)
    assert result.accuracy == 1.0 and result.accuracy_std == 0.0
    assert result.best_thresholds == [0.01] * 10  # d = 0 vs d = 2: the first separating threshold
    assert result.auc == 1.0 and result.eer == 0.0
    assert result.tpr_at_fpr[1e-2] == 1.0 and math.isnan(result.tpr_at_fpr[1e-4])  # 100 negatives
    assert result.val_at_far == 1.0 and result.far == 0.0


def test_all_same_pairs():
    rng = np.random.default_rng(1)
    emb = np.repeat(rng.normal(size=(50, 8)), 2, axis=0)  # identical pairs: distance 0
    issame = np.ones(50, dtype=bool)
    result = verify(emb, issame)
    assert result.accuracy == 1.0 and result.best_thresholds == [0.01] * 10
    assert result.num_negatives == 0
    assert all(math.isnan(v) for v in result.tpr_at_fpr.values())
    assert math.isnan(result.auc) and math.isnan(result.eer) and math.isnan(result.far)
    data = result.to_dict()
    assert data["auc"] is None and data["tpr_at_fpr"]["1e-1"] is None


def test_invariances():
    emb, issame = _random_pairs(500, seed=3)
    base = verify(emb, issame)
    scaled = verify(emb * np.linspace(0.5, 4, emb.shape[0])[:, None], issame)  # per-row scale
    rotation = np.linalg.qr(np.random.default_rng(0).normal(size=(16, 16)))[0]
    rotated = verify(emb.astype(np.float64) @ rotation, issame)
    as_torch = verify(torch.from_numpy(emb), torch.from_numpy(issame))
    for other in (scaled, rotated, as_torch):
        assert other.fold_accuracies == pytest.approx(base.fold_accuracies, abs=1e-12)
        assert other.auc == pytest.approx(base.auc, abs=1e-9)


def test_to_dict_is_json_ready():
    import json

    emb, issame = _random_pairs(300, seed=5)
    data = verify(emb, issame, xnorm=12.5).to_dict()
    text = json.dumps(data, allow_nan=False)
    assert '"1e-4": null' in text and data["xnorm"] == 12.5
    assert set(data) >= {
        "accuracy",
        "accuracy_std",
        "fold_accuracies",
        "best_thresholds",
        "tpr_at_fpr",
        "auc",
        "eer",
    }


def test_bad_input_is_reported():
    emb, issame = _random_pairs(30)
    with pytest.raises(ValueError, match="one label per pair"):
        verify(emb, issame[:-1])
    with pytest.raises(ValueError, match="even number of rows"):
        verify(emb[:-1], issame)
    with pytest.raises(ValueError, match="2N x D"):
        verify(emb[:, 0], issame)
    bad = emb.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        verify(bad, issame)
    with pytest.raises(ValueError, match="boolean or 0/1"):
        verify(emb, np.full(30, 2))
    assert verification.ACCURACY_THRESHOLDS.size == 400 and verification.VAL_THRESHOLDS.size == 4000
