"""CCKD: golden values, the Taylor expansion against the exact RBF kernel, invariances, gradcheck."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ekd.distill import create
from tests.distill.utils import feats, rng, unit_rows


def ref_kernel(u: np.ndarray, v: np.ndarray, gamma: float, order: int) -> float:
    dot = float(u @ v)
    return sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * dot**p for p in range(order + 1))


def ref_cckd(s: np.ndarray, t: np.ndarray, gamma: float = 0.4, order: int = 2) -> float:
    us, ut = unit_rows(s), unit_rows(t)
    b = len(s)
    total = 0.0
    for i in range(b):
        for j in range(b):
            total += (ref_kernel(us[i], us[j], gamma, order) - ref_kernel(ut[i], ut[j], gamma, order)) ** 2
    return total / b**2


def run(objective, s, t):
    return objective(feats(s), feats(t), torch.zeros(len(s))).item()


@pytest.mark.parametrize(("gamma", "order"), [(0.4, 2), (1.0, 3), (0.4, 0)])
def test_golden(gamma, order):
    s, t = rng(1).standard_normal((4, 3)), rng(2).standard_normal((4, 5))
    expected = ref_cckd(s, t, gamma, order)
    assert run(create("cckd", gamma=gamma, order=order), s, t) == pytest.approx(
        expected, rel=1e-12, abs=1e-300
    )
    if order == 0:
        assert expected == 0.0  # a constant kernel carries no information


def test_high_order_recovers_the_gaussian_kernel():
    x = rng(3).standard_normal((5, 4))
    u = unit_rows(x)
    exact = np.array([[math.exp(-0.4 * ((a - b) ** 2).sum()) for b in u] for a in u])
    approx = create("cckd", order=12).correlation(torch.tensor(x)).numpy()
    assert np.allclose(approx, exact, rtol=0, atol=1e-10)


def test_zero_when_equal_up_to_scale():
    t = rng(4).standard_normal((5, 3))
    scales = rng(5).uniform(0.1, 10, size=(5, 1))
    assert run(create("cckd"), t * scales, t) == pytest.approx(0.0, abs=1e-15)


def test_gradcheck():
    s = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 3, dtype=torch.float64)
    cckd = create("cckd")
    assert torch.autograd.gradcheck(lambda x: cckd(feats(x), feats(t), torch.zeros(4)), (s,))


def test_bad_input():
    with pytest.raises(ValueError, match="gamma"):
        create("cckd", gamma=0)
    with pytest.raises(ValueError, match="order"):
        create("cckd", order=-1)
