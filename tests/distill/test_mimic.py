"""Feature mimic: golden values, invariance to positive scaling, zero at equality, gradcheck."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ekd.distill import create
from tests.distill.utils import feats, rng


def reference_mimic(f_s: np.ndarray, f_t: np.ndarray) -> float:
    total = 0.0
    for a, b in zip(f_s, f_t):
        a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
        total += sum((x - y) ** 2 for x, y in zip(a, b))
    return total / len(f_s)


def test_golden_and_hand_value():
    f_s, f_t = rng(1).standard_normal((4, 3)), rng(2).standard_normal((4, 3))
    mimic = create("mimic")
    assert mimic(feats(f_s), feats(f_t), torch.zeros(4)).item() == pytest.approx(
        reference_mimic(f_s, f_t), rel=1e-12
    )
    # orthogonal unit vectors are at squared distance 2, opposite ones at 4
    hand = mimic(feats([[3.0, 0.0], [0.0, 2.0]]), feats([[0.0, 5.0], [0.0, -1.0]]), torch.zeros(2))
    assert hand.item() == pytest.approx((2.0 + 4.0) / 2)


def test_zero_at_equality_and_positive_scale_invariance():
    f_s, f_t = rng(3).standard_normal((5, 4)), rng(4).standard_normal((5, 4))
    scales = rng(5).uniform(0.1, 10, size=(5, 1))
    mimic = create("mimic")
    base = mimic(feats(f_s), feats(f_t), torch.zeros(5)).item()
    assert mimic(feats(f_s * scales), feats(f_t / scales), torch.zeros(5)).item() == pytest.approx(
        base, rel=1e-12
    )
    assert mimic(feats(f_t * scales), feats(f_t), torch.zeros(5)).item() == pytest.approx(0.0, abs=1e-14)


def test_gradcheck():
    f_t = torch.randn(3, 4, dtype=torch.float64)
    mimic = create("mimic")
    f_s = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: mimic(feats(x), feats(f_t), torch.zeros(3)), (f_s,))


def test_dimension_mismatch_is_an_error():
    with pytest.raises(ValueError, match="embedding shapes differ"):
        create("mimic")(feats(np.ones((2, 3))), feats(np.ones((2, 4))), torch.zeros(2))
