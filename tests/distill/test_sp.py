"""SP: golden values from loops, invariances, zero rows, stage option, gradcheck; the ``tface`` variant
against TFace's ``SimPerserving`` restated in plain torch ops
(Tencent/TFace ``recognition/tasks/ekd/distillation/similarity_perserving.py``) and an analytic gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ekd.distill import create
from tests.distill.utils import feats, orthogonal, rng, unit_rows


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
    with pytest.raises(ValueError, match=r"unknown variant 'tfase'.*\['paper', 'tface'\]"):
        create("sp", variant="tfase")
    with pytest.raises(ValueError, match="batch sizes differ"):
        create("sp")(feats(np.ones((3, 2))), feats(np.ones((4, 2))), torch.zeros(3))


# --- variant="tface" -------------------------------------------------------------------------------


def tface_sp(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """TFace ``SimPerserving.similarity_loss`` (similarity_perserving.py), line by line in torch ops."""
    batch_size = f_s.size(0)
    f_s = f_s.view(batch_size, -1)
    f_t = f_t.view(batch_size, -1)
    f_s = torch.nn.functional.normalize(f_s)
    f_t = torch.nn.functional.normalize(f_t)
    s_similarity = torch.mm(f_s, torch.t(f_s))
    t_similarity = torch.mm(f_t, torch.t(f_t))
    diff_norm = torch.norm(s_similarity - t_similarity)
    return diff_norm * diff_norm / (batch_size * batch_size)


def analytic_tface_sp(s: np.ndarray, t: np.ndarray) -> tuple[float, np.ndarray]:
    """Value and d/ds of ||U_s U_s^T - U_t U_t^T||_F^2 / B^2 (U: unit rows), derived by hand:
    dL/dU_s = 4 / B^2 (C_s - C_t) U_s; through u = f / |f|: dL/df = (dL/du - (dL/du . u) u) / |f|."""
    b = len(s)
    s, t = s.reshape(b, -1), t.reshape(b, -1)
    norms = np.sqrt((s * s).sum(axis=1, keepdims=True))
    u_s, u_t = s / norms, unit_rows(t)
    diff = u_s @ u_s.T - u_t @ u_t.T
    d_u = 4.0 / b**2 * diff @ u_s
    d_f = (d_u - (d_u * u_s).sum(axis=1, keepdims=True) * u_s) / norms
    return float((diff**2).sum()) / b**2, d_f


def _value_and_grad(
    objective, s: np.ndarray, t: np.ndarray, stage: str | None = None
) -> tuple[float, np.ndarray]:
    s_t = torch.tensor(s, requires_grad=True)
    if stage is None:
        student, teacher = feats(s_t), feats(t)
    else:  # the maps under ``stage``; the embeddings are unused placeholders
        student, teacher = (
            feats(np.zeros((len(s), 1)), **{stage: s_t}),
            feats(np.zeros((len(s), 1)), **{stage: t}),
        )
    loss = objective(student, teacher, torch.zeros(len(s)))
    loss.backward()
    return loss.item(), s_t.grad.numpy()


@pytest.mark.parametrize(("shape_s", "shape_t"), [((6, 3), (6, 5)), ((5, 4), (5, 4)), ((7, 8), (7, 2))])
def test_tface_equals_tface_code_value_and_gradient(shape_s, shape_t):
    s, t = rng(11).standard_normal(shape_s) * 3.0, rng(12).standard_normal(shape_t)
    value, grad = _value_and_grad(create("sp", variant="tface"), s, t)
    s_ref = torch.tensor(s, requires_grad=True)
    ref = tface_sp(s_ref, torch.tensor(t))
    ref.backward()
    assert ref.item() > 0
    assert value == pytest.approx(ref.item(), rel=1e-12)
    np.testing.assert_allclose(grad, s_ref.grad.numpy(), rtol=1e-10, atol=1e-15)
    # and against the hand-derived gradient (not autograd)
    expected_value, expected_grad = analytic_tface_sp(s, t)
    assert value == pytest.approx(expected_value, rel=1e-12)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-10, atol=1e-15)


def test_tface_on_a_stage_map_flattens_like_tface():
    m_s, m_t = rng(13).standard_normal((4, 2, 2, 2)), rng(14).standard_normal((4, 3, 1, 2))
    value, grad = _value_and_grad(create("sp", variant="tface", stage="stage2"), m_s, m_t, "stage2")
    expected_value, expected_grad = analytic_tface_sp(m_s, m_t)
    assert value == pytest.approx(expected_value, rel=1e-12)
    np.testing.assert_allclose(grad, expected_grad.reshape(m_s.shape), rtol=1e-10, atol=1e-15)


def test_tface_limits_and_invariances():
    s, t = rng(15).standard_normal((5, 4)), rng(16).standard_normal((5, 4))
    sp = create("sp", variant="tface")
    # zero when the student equals the teacher up to a positive scale per sample (cosines unchanged)
    scales = rng(17).uniform(0.1, 10.0, size=(5, 1))
    assert run(sp, t * scales, t) == pytest.approx(0.0, abs=1e-14)
    assert run(sp, s @ orthogonal(4, 18) * scales, t) == pytest.approx(run(sp, s, t), rel=1e-10)
    # the paper variant is not invariant to per-sample scales: the two variants are different losses
    paper = create("sp")
    assert run(paper, s * scales, t) != pytest.approx(run(paper, s, t), rel=1e-6)
    # orthonormal student rows, identical teacher rows: C_s = I, C_t = all ones -> (B^2 - B) / B^2
    assert run(sp, np.eye(5), np.ones((5, 3))) == pytest.approx((25 - 5) / 25, rel=1e-14)
    # two antipodal groups vs one point: the 8 cross-group cosines differ by 2, the rest by 0
    two = np.array([[1.0, 0.0]] * 2 + [[-1.0, 0.0]] * 2)
    assert run(sp, two, np.ones((4, 2))) == pytest.approx(8 * 4 / 16, rel=1e-14)


def test_tface_zero_row_like_tface():
    s, t = rng(19).standard_normal((4, 3)), rng(20).standard_normal((4, 3))
    s[1] = 0.0  # F.normalize divides by eps: the unit row stays 0, so its cosines are 0
    value, grad = _value_and_grad(create("sp", variant="tface"), s, t)
    ref = tface_sp(torch.tensor(s), torch.tensor(t)).item()
    assert value == pytest.approx(ref, rel=1e-12) and np.isfinite(grad).all()


def test_tface_gradcheck_and_variant_in_repr():
    s = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 5, dtype=torch.float64)
    sp = create("sp", variant="tface")
    assert torch.autograd.gradcheck(lambda x: sp(feats(x), feats(t), torch.zeros(4)), (s,))
    assert "variant='tface'" in repr(sp) and "variant='paper'" in repr(create("sp"))
