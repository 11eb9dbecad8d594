"""CCKD: golden values, the Taylor expansion against the exact RBF kernel, invariances, gradcheck; the
``tface`` variant against TFace's ``CC`` restated in plain torch ops
(Tencent/TFace ``recognition/tasks/ekd/distillation/cc.py``) and an analytic gradient."""

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
    with pytest.raises(ValueError, match=r"variant='tface', order \(TFace's p, orders 0..p-1\) must be >= 1"):
        create("cckd", variant="tface", order=0)
    with pytest.raises(ValueError, match=r"unknown variant 'TFace'.*\['paper', 'tface'\]"):
        create("cckd", variant="TFace")


# --- variant="tface": order is TFace's p, the orders range(p) = 0..p-1 -----------------------------


def tface_cc(feat_s: torch.Tensor, feat_t: torch.Tensor, gamma: float = 0.4, p: int = 2) -> torch.Tensor:
    """TFace ``CC.forward`` / ``get_correlation_matrix`` (cc.py, defaults gamma=0.4, p=2) in torch ops."""

    def get_correlation_matrix(feat):
        feat = torch.nn.functional.normalize(feat)
        sim_mat = torch.matmul(feat, feat.t())
        corr_mat = torch.zeros_like(sim_mat)
        for k in range(p):
            corr_mat += math.exp(-2 * gamma) * (2 * gamma) ** k / math.factorial(k) * torch.pow(sim_mat, k)
        return corr_mat

    return torch.nn.functional.mse_loss(get_correlation_matrix(feat_s), get_correlation_matrix(feat_t))


def analytic_tface_cc(s: np.ndarray, t: np.ndarray, gamma: float, p: int) -> tuple[float, np.ndarray]:
    """Value and d/ds by hand: L = mean (K(C_s) - K(C_t))^2, K(c) = sum_{k<p} a_k c^k, C = U U^T;
    dL/dC_s = 2 / B^2 (K_s - K_t) K'(C_s), dL/dU_s = 2 (dL/dC_s) U_s (symmetric), then through u = f/|f|."""
    a = [math.exp(-2 * gamma) * (2 * gamma) ** k / math.factorial(k) for k in range(p)]
    b = len(s)
    norms = np.sqrt((s * s).sum(axis=1, keepdims=True))
    u_s, u_t = s / norms, unit_rows(t)
    c_s, c_t = u_s @ u_s.T, u_t @ u_t.T
    k_s = sum(a[k] * c_s**k for k in range(p))
    k_t = sum(a[k] * c_t**k for k in range(p))
    dk_s = sum(k * a[k] * c_s ** (k - 1) for k in range(1, p))
    d_c = 2.0 / b**2 * (k_s - k_t) * dk_s
    d_u = 2.0 * d_c @ u_s
    d_f = (d_u - (d_u * u_s).sum(axis=1, keepdims=True) * u_s) / norms
    return float(((k_s - k_t) ** 2).mean()), d_f


@pytest.mark.parametrize(("gamma", "p"), [(0.4, 2), (0.4, 3), (1.0, 4), (0.25, 1)])
def test_tface_equals_tface_code_value_and_gradient(gamma, p):
    s, t = rng(21).standard_normal((6, 3)) * 2.0, rng(22).standard_normal((6, 5))
    s_t = torch.tensor(s, requires_grad=True)
    loss = create("cckd", variant="tface", gamma=gamma, order=p)(feats(s_t), feats(t), torch.zeros(6))
    s_ref = torch.tensor(s, requires_grad=True)
    ref = tface_cc(s_ref, torch.tensor(t), gamma, p)
    expected_value, expected_grad = analytic_tface_cc(s, t, gamma, p)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12, abs=1e-300)
    assert loss.item() == pytest.approx(expected_value, rel=1e-12, abs=1e-300)
    if p == 1:  # range(1): the constant kernel e^{-2 gamma}, nothing to learn
        assert loss.item() == 0.0 and not loss.requires_grad
        return
    assert loss.item() > 0
    loss.backward()
    ref.backward()
    np.testing.assert_allclose(s_t.grad.numpy(), s_ref.grad.numpy(), rtol=1e-10, atol=1e-16)
    np.testing.assert_allclose(s_t.grad.numpy(), expected_grad, rtol=1e-10, atol=1e-16)


def test_tface_default_is_tfaces_default_and_one_order_below_the_paper():
    s, t = rng(23).standard_normal((5, 4)), rng(24).standard_normal((5, 4))
    tface = create("cckd", variant="tface")
    assert (tface.gamma, tface.order) == (0.4, 2)  # TFace CC(gamma=0.4, p=2)
    assert run(tface, s, t) == pytest.approx(tface_cc(torch.tensor(s), torch.tensor(t)).item(), rel=1e-12)
    # orders 0..p-1 (tface) are orders 0..P (paper) with P = p - 1: the golden loop of the paper variant
    for p in (2, 3, 5):
        assert run(create("cckd", variant="tface", order=p), s, t) == pytest.approx(
            ref_cckd(s, t, 0.4, p - 1), rel=1e-12
        )
    # so the same ``order`` means one Taylor term less with tface: the defaults differ, order + 1 agrees
    assert run(tface, s, t) != pytest.approx(run(create("cckd"), s, t), rel=1e-6)
    assert run(create("cckd", variant="tface", order=3), s, t) == pytest.approx(
        run(create("cckd"), s, t), rel=1e-12
    )


def test_tface_p2_is_a_rescaled_cosine_sp():
    s, t = rng(25).standard_normal((6, 3)), rng(26).standard_normal((6, 4))
    us, ut = unit_rows(s), unit_rows(t)
    cosine_sp = float(((us @ us.T - ut @ ut.T) ** 2).mean())
    for gamma in (0.4, 1.0):
        factor = (2 * gamma * math.exp(-2 * gamma)) ** 2  # the order-1 coefficient, squared
        got = run(create("cckd", variant="tface", gamma=gamma, order=2), s, t)
        assert got == pytest.approx(factor * cosine_sp, rel=1e-12)


def test_tface_limits():
    t = rng(27).standard_normal((5, 3))
    scales = rng(28).uniform(0.1, 10, size=(5, 1))
    assert run(create("cckd", variant="tface"), t * scales, t) == pytest.approx(0.0, abs=1e-15)
    # high p: the kernel tends to the Gaussian exp(-gamma ||u - v||^2), as in the paper variant
    u = unit_rows(t)
    exact = np.array([[math.exp(-0.4 * ((a - b) ** 2).sum()) for b in u] for a in u])
    approx = create("cckd", variant="tface", order=13).correlation(torch.tensor(t)).numpy()
    assert np.allclose(approx, exact, rtol=0, atol=1e-10)


def test_tface_gradcheck_and_repr():
    s = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 3, dtype=torch.float64)
    cckd = create("cckd", variant="tface", order=3)
    assert torch.autograd.gradcheck(lambda x: cckd(feats(x), feats(t), torch.zeros(4)), (s,))
    assert "variant='tface'" in repr(cckd)
