"""ROC, TPR@FPR, AUC and EER against hand-worked score lists and an O(P x N) Mann-Whitney count."""

import math

import numpy as np
import pytest

from ekd.eval import metrics

# 5 genuine and 10 impostor scores; worked through by hand in the tests below
POS = [0.95, 0.9, 0.8, 0.6, 0.3]
NEG = [0.85, 0.7, 0.5, 0.4, 0.2, 0.1, 0.05, 0.0, -0.1, -0.2]
LABELS = [1] * len(POS) + [0] * len(NEG)
SCORES = POS + NEG


def test_tpr_at_fpr_le_rule_by_hand():
    out = metrics.tpr_at_fpr(LABELS, SCORES, fprs=(1.0, 0.3, 0.2, 0.15, 0.1, 0.05, 0.01))
    # 1 impostor allowed (FPR 0.1): accept down to 0.8 (0.85 is the impostor) -> 3 of 5 genuine
    assert out[0.1] == pytest.approx(0.6)
    assert out[0.15] == pytest.approx(0.6)  # still only floor(1.5) = 1 impostor
    assert out[0.2] == pytest.approx(0.8)  # 2 impostors: down to 0.6
    assert out[0.3] == pytest.approx(0.8)  # 3 impostors: 0.5 accepted, nothing genuine gained
    assert out[1.0] == pytest.approx(1.0)
    # below 1 / num_negatives = 0.1 the data cannot resolve the rate
    assert math.isnan(out[0.05]) and math.isnan(out[0.01])


def test_tpr_at_fpr_nearest_rule_matches_insightface_reading():
    # sklearn's pruned ROC of this list has FPR points 0, .1, .2, .4, 1 (0.3 is dropped as collinear)
    out = metrics.tpr_at_fpr(LABELS, SCORES, fprs=(0.35, 0.1), rule="nearest")
    assert out[0.35] == pytest.approx(1.0)  # nearest kept point is FPR 0.4, TPR 1.0
    assert out[0.1] == pytest.approx(0.6)  # FPR 0.1 holds TPR .4 and .6: ties go to the larger
    assert metrics.tpr_at_fpr(LABELS, SCORES, fprs=(0.35,))[0.35] == pytest.approx(0.8)


def test_roc_drop_intermediate_removes_collinear_points():
    # tied groups of one genuine + one impostor put (1/3, 1/3), (2/3, 2/3), (1, 1) on one line
    labels, scores = [1, 0, 1, 0, 1, 0], [3, 3, 2, 2, 1, 1]
    full = metrics.roc_curve(labels, scores)
    np.testing.assert_allclose(full.fpr, [0, 1 / 3, 2 / 3, 1])
    pruned = metrics.roc_curve(labels, scores, drop_intermediate=True)
    np.testing.assert_allclose(pruned.fpr, [0, 1 / 3, 1])
    np.testing.assert_allclose(pruned.tpr, [0, 1 / 3, 1])
    assert pruned.thresholds[0] == np.inf and list(pruned.thresholds[1:]) == [3, 1]
    # nearest to 0.6 on the pruned curve is 1/3 (0.267 away) not 1 (0.4 away)
    assert metrics.tpr_at_fpr(labels, scores, fprs=(0.6,), rule="nearest")[0.6] == pytest.approx(1 / 3)


def test_roc_points_by_hand():
    roc = metrics.roc_curve([1, 0, 1], [0.9, 0.5, 0.4])
    np.testing.assert_allclose(roc.fpr, [0, 0, 1, 1])
    np.testing.assert_allclose(roc.tpr, [0, 0.5, 0.5, 1])
    assert list(roc.fps) == [0, 0, 1, 1] and list(roc.tps) == [0, 1, 1, 2]


def _mann_whitney(labels, scores):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = 0.0
    for p in pos:
        for n in neg:
            wins += 1.0 if p > n else 0.5 if p == n else 0.0
    return wins / (len(pos) * len(neg))


def test_auc_equals_mann_whitney_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.random(300) < 0.4
    scores = np.round(rng.normal(size=300) + labels, 1)  # rounding creates many ties
    assert metrics.auc(labels, scores) == pytest.approx(_mann_whitney(labels, scores), abs=1e-12)
    assert metrics.auc(LABELS, SCORES) == pytest.approx(_mann_whitney(LABELS, SCORES), abs=1e-12)


def test_auc_limits():
    assert metrics.auc([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1]) == 1.0
    assert metrics.auc([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]) == 0.0
    assert metrics.auc([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert math.isnan(metrics.auc([1, 1], [0.3, 0.2]))


def test_eer_by_hand():
    assert metrics.eer([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1]) == 0.0
    # points (0,0) (0,1/3) (0,2/3) (1/3,2/3) ...: at FPR 1/3 the FNR is 1/3
    assert metrics.eer([1, 1, 0, 1, 0, 0], [0.9, 0.8, 0.7, 0.3, 0.2, 0.1]) == pytest.approx(1 / 3)
    # between (0, .5) and (1, .5) FNR stays .5: FPR = FNR at FPR .5 (interpolated)
    assert metrics.eer([1, 0, 1], [0.9, 0.5, 0.4]) == pytest.approx(0.5)
    assert metrics.eer([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]) == pytest.approx(1.0)


def test_invariant_to_monotone_score_transform():
    rng = np.random.default_rng(1)
    labels = rng.random(200) < 0.5
    scores = rng.normal(size=200) + labels
    transformed = np.exp(3 * scores) + 5
    for fn in (metrics.auc, metrics.eer):
        assert fn(labels, scores) == pytest.approx(fn(labels, transformed), abs=1e-12)
    a, b = metrics.tpr_at_fpr(labels, scores), metrics.tpr_at_fpr(labels, transformed)
    np.testing.assert_array_equal(list(a.values()), list(b.values()))  # NaN == NaN here


def test_fpr_key():
    assert [metrics.fpr_key(f) for f in metrics.FPR_TARGETS] == [
        "1e-1",
        "1e-2",
        "1e-3",
        "1e-4",
        "1e-5",
        "1e-6",
    ]


def test_bad_input_is_reported():
    with pytest.raises(ValueError, match="equal length"):
        metrics.roc_curve([1, 0], [0.1])
    with pytest.raises(ValueError, match="0/1"):
        metrics.roc_curve([2, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="non-finite"):
        metrics.roc_curve([1, 0], [np.nan, 0.2])
    with pytest.raises(ValueError, match="rule"):
        metrics.tpr_at_fpr([1, 0], [0.1, 0.2], rule="closest")
    with pytest.raises(ValueError, match="target FPR"):
        metrics.tpr_at_fpr([1, 0], [0.1, 0.2], fprs=(0.0,))


def test_downsampled_roc_never_exceeds_the_curve():
    # a staircase ROC with 1001 points: tpr = sqrt(fpr)
    fpr = [i / 1000 for i in range(1001)]
    tpr = [math.sqrt(f) for f in fpr]
    small = metrics.downsample_roc(fpr, tpr, points=50)
    assert len(small["fpr"]) <= 50 and small["fpr"][0] == 0.0 and small["fpr"][-1] == 1.0
    for f, t in zip(small["fpr"], small["tpr"]):
        # the largest grid point at or below f
        grid = math.floor(f * 1000 + 1e-9) / 1000
        assert t == pytest.approx(math.sqrt(grid), abs=1e-12)
    assert metrics.downsample_roc([0, 1], [0, 1], points=50) == {"fpr": [0.0, 1.0], "tpr": [0.0, 1.0]}
