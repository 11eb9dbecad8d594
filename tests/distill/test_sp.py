"""SP: golden values from loops, invariances, zero rows, stage option, gradcheck."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ekd.distill import create
from tests.distill.utils import feats, orthogonal, rng


def ref_sp(f_s: np.ndarray, f_t: np.ndarray) -> float:
    b = len(f_s)

    def normalised_gram(f):
        f = f.reshape(b, -1)
        g = [[float(f[i] @ f[j]) for j in range(b)] for i in range(b)]
        out = []
        for row in g:
            norm = max(np.sqrt(sum(v * v for v in row)), 1e-12)
            out.append([v / norm for v in row])
        return out

    gs, gt = normalised_gram(f_s), normalised_gram(f_t)
    return sum((gt[i][j] - gs[i][j]) ** 2 for i in range(b) for j in range(b)) / b**2


def run(objective, s, t, **kw):
    return objective(feats(s, **kw.get("s", {})), feats(t, **kw.get("t", {})), torch.zeros(len(s))).item()


def test_golden_different_widths():
    s, t = rng(1).standard_normal((4, 3)), rng(2).standard_normal((4, 5))
    expected = ref_sp(s, t)
    assert expected > 0
    assert run(create("sp"), s, t) == pytest.approx(expected, rel=1e-12)


def test_zero_when_equal_and_invariances():
    s, t = rng(3).standard_normal((5, 4)), rng(4).standard_normal((5, 4))
    sp = create("sp")
    assert run(sp, t, t) == pytest.approx(0.0, abs=1e-14)
    base = run(sp, s, t)
    assert run(sp, s @ orthogonal(4, 5) * 3.0, t @ orthogonal(4, 6) * 0.1) == pytest.approx(base, rel=1e-10)


def test_zero_feature_row_is_finite():
    s, t = rng(7).standard_normal((4, 3)), rng(8).standard_normal((4, 3))
    s[2] = 0.0  # its Gram row is zero: divided by eps, it stays 0
    s_t = torch.tensor(s, requires_grad=True)
    loss = create("sp")(feats(s_t), feats(t), torch.zeros(4))
    loss.backward()
    assert loss.item() == pytest.approx(ref_sp(s, t), rel=1e-12)
    assert torch.isfinite(s_t.grad).all()


def test_stage_option():
    m_s, m_t = rng(9).standard_normal((4, 2, 2, 2)), rng(10).standard_normal((4, 3, 1, 2))
    sp = create("sp", stage="stage2")
    assert sp.requires == frozenset({"stages.stage2"}) and sp.relational
    assert create("sp").relational is True
    loss = sp(feats(np.zeros((4, 1)), stage2=m_s), feats(np.zeros((4, 1)), stage2=m_t), torch.zeros(4))
    assert loss.item() == pytest.approx(ref_sp(m_s, m_t), rel=1e-12)


def test_gradcheck():
    s = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 5, dtype=torch.float64)
    sp = create("sp")
    assert torch.autograd.gradcheck(lambda x: sp(feats(x), feats(t), torch.zeros(4)), (s,))


def test_bad_input():
    with pytest.raises(ValueError, match="unknown stage"):
        create("sp", stage="stage0")
    with pytest.raises(ValueError, match="batch sizes differ"):
        create("sp")(feats(np.ones((3, 2))), feats(np.ones((4, 2))), torch.zeros(3))
