"""Triplet distillation: golden values for both minings, the d_max = 0 limit, empty batches, gradcheck."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from ekd.distill import common, create
from tests.distill.utils import feats, rng, unit_rows

LABELS = [0, 0, 1, 1, 1, 2]


def ref_distances(x: np.ndarray) -> np.ndarray:
    u = unit_rows(x)
    return np.array([[((a - b) ** 2).sum() for b in u] for a in u])


def ref_margins(gaps: list[float], m_min: float, m_max: float) -> list[float]:
    d = [max(g, 0.0) for g in gaps]
    d_max = max(d)
    return [m_min] * len(d) if d_max == 0 else [m_min + (m_max - m_min) * v / d_max for v in d]


def ref_all(s, t, labels, m_min=0.2, m_max=0.5) -> float:
    ds, dt = ref_distances(s), ref_distances(t)
    triplets = [
        (a, p, n)
        for a in range(len(labels))
        for p in range(len(labels))
        for n in range(len(labels))
        if a != p and labels[a] == labels[p] and labels[n] != labels[a]
    ]
    margins = ref_margins([dt[a][n] - dt[a][p] for a, p, n in triplets], m_min, m_max)
    losses = [max(ds[a][p] - ds[a][n] + m, 0.0) for (a, p, n), m in zip(triplets, margins)]
    return sum(losses) / len(losses)


def ref_batch_hard(s, t, labels, m_min=0.2, m_max=0.5) -> float:
    ds, dt = ref_distances(s), ref_distances(t)
    triplets = []
    for a in range(len(labels)):
        pos = [p for p in range(len(labels)) if p != a and labels[p] == labels[a]]
        neg = [n for n in range(len(labels)) if labels[n] != labels[a]]
        if pos and neg:
            triplets.append((a, max(pos, key=lambda p: ds[a][p]), min(neg, key=lambda n: ds[a][n])))
    margins = ref_margins([dt[a][n] - dt[a][p] for a, p, n in triplets], m_min, m_max)
    losses = [max(ds[a][p] - ds[a][n] + m, 0.0) for (a, p, n), m in zip(triplets, margins)]
    return sum(losses) / len(losses)


def run(objective, s, t, labels):
    return objective(feats(s), feats(t), torch.tensor(labels)).item()


def test_golden_all_triplets():
    s, t = rng(1).standard_normal((6, 3)), rng(2).standard_normal((6, 3))
    expected = ref_all(s, t, LABELS)
    assert expected > 0
    objective = create("triplet")
    assert run(objective, s, t, LABELS) == pytest.approx(expected, rel=1e-12)
    assert objective.log_items()["triplets"].item() == 2 * 4 + 6 * 3  # (a, p) pairs x negatives of a


def test_golden_batch_hard_and_other_margins():
    s, t = rng(3).standard_normal((6, 3)), rng(4).standard_normal((6, 3))
    objective = create("triplet", mining="batch_hard", margin_min=0.1, margin_max=0.9)
    assert run(objective, s, t, LABELS) == pytest.approx(ref_batch_hard(s, t, LABELS, 0.1, 0.9), rel=1e-12)


def test_collapsed_teacher_gives_minimum_margin_everywhere():
    # d = 0 for every triplet -> m = m_min: the plain FaceNet triplet loss with alpha = 0.2
    s = rng(5).standard_normal((6, 3))
    t = np.ones((6, 3))
    ds = ref_distances(s)
    losses = [
        max(ds[a][p] - ds[a][n] + 0.2, 0.0)
        for a in range(6)
        for p in range(6)
        for n in range(6)
        if a != p and LABELS[a] == LABELS[p] and LABELS[n] != LABELS[a]
    ]
    assert run(create("triplet"), s, t, LABELS) == pytest.approx(sum(losses) / len(losses), rel=1e-12)


def test_invariant_to_positive_scaling_and_zero_when_well_separated():
    s, t = rng(6).standard_normal((6, 3)), rng(7).standard_normal((6, 3))
    scales = rng(8).uniform(0.1, 10, size=(6, 1))
    base = run(create("triplet"), s, t, LABELS)
    assert run(create("triplet"), s * scales, t / scales, LABELS) == pytest.approx(base, rel=1e-12)
    # identities on orthogonal axes: D(a, p) = 0, D(a, n) = 2 > any margin
    separated = np.eye(3)[LABELS]
    assert run(create("triplet"), separated, t, LABELS) == 0.0


def test_batch_without_triplets_is_zero_with_one_warning():
    common._WARNED.discard("triplet-no-triplets")
    s = torch.randn(4, 3, requires_grad=True)
    objective = create("triplet")
    with pytest.warns(RuntimeWarning, match="no valid triplet"):
        loss = objective(feats(s), feats(torch.randn(4, 3)), torch.tensor([0, 1, 2, 3]))
    assert loss.item() == 0.0
    loss.backward()  # still attached to the graph: every rank's parameters get a (zero) gradient
    assert torch.equal(s.grad, torch.zeros_like(s))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert objective(feats(s), feats(torch.randn(4, 3)), torch.tensor([5, 5, 5, 5])).item() == 0.0


@pytest.mark.parametrize("mining", ["all", "batch_hard"])
def test_gradcheck(mining):
    # well-spread points so that no hinge sits at its kink
    s = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randn(6, 3, dtype=torch.float64)
    objective = create("triplet", mining=mining)
    labels = torch.tensor(LABELS)
    assert torch.autograd.gradcheck(lambda x: objective(feats(x), feats(t), labels), (s,))


def test_bad_input():
    with pytest.raises(ValueError, match="mining"):
        create("triplet", mining="semi")
    with pytest.raises(ValueError, match="margin_min"):
        create("triplet", margin_min=0.6, margin_max=0.5)
    with pytest.raises(ValueError, match="labels must have shape"):
        create("triplet")(feats(np.ones((3, 2))), feats(np.ones((3, 2))), torch.zeros(2))
