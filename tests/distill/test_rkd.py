"""RKD: golden values from explicit loops, invariances, chunked angle = unchunked, anchors, gradcheck."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ekd.distill import create
from ekd.distill.rkd import rkd_angle_loss
from tests.distill.utils import feats, orthogonal, rng, smooth_l1


def ref_distance_term(s: np.ndarray, t: np.ndarray) -> float:
    b = len(s)

    def normalised(x):
        d = [[float(np.sqrt(((x[i] - x[j]) ** 2).sum())) for j in range(b)] for i in range(b)]
        off_diagonal = [d[i][j] for i in range(b) for j in range(b) if i != j]
        mu = sum(off_diagonal) / len(off_diagonal)
        return [[v / mu for v in row] for row in d]

    ds, dt = normalised(s), normalised(t)
    return sum(smooth_l1(ds[i][j] - dt[i][j]) for i in range(b) for j in range(b)) / b**2


def ref_angle(x: np.ndarray, vertex: int, j: int, k: int) -> float:
    def unit(v):
        n = np.sqrt((v * v).sum())
        return v / n if n > 0 else v * 0.0

    return float(unit(x[j] - x[vertex]) @ unit(x[k] - x[vertex]))


def ref_angle_term(s: np.ndarray, t: np.ndarray, vertices=None) -> float:
    b = len(s)
    vertices = range(b) if vertices is None else vertices
    total = 0.0
    for i in vertices:
        for j in range(b):
            for k in range(b):
                total += smooth_l1(ref_angle(s, i, j, k) - ref_angle(t, i, j, k))
    return total / (len(vertices) * b * b)


def data(seed: int, b: int = 4, d: int = 3):
    # spread the student so that some distance differences exceed 1 (both Smooth-L1 branches are hit)
    return rng(seed).standard_normal((b, d)) * 2.5, rng(seed + 100).standard_normal((b, d))


def run(objective, s, t):
    return objective(feats(s), feats(t), torch.zeros(len(s))).item()


def test_golden_terms_and_default_weights():
    s, t = data(1)
    ref_d, ref_a = ref_distance_term(s, t), ref_angle_term(s, t)
    assert ref_d > 0 and ref_a > 0
    assert run(create("rkd", angle_weight=0), s, t) == pytest.approx(25 * ref_d, rel=1e-10)
    assert run(create("rkd", distance_weight=0), s, t) == pytest.approx(50 * ref_a, rel=1e-10)
    rkd = create("rkd")
    assert run(rkd, s, t) == pytest.approx(25 * ref_d + 50 * ref_a, rel=1e-10)
    logged = rkd.log_items()
    assert logged["distance"].item() == pytest.approx(ref_d, rel=1e-10)
    assert logged["angle"].item() == pytest.approx(ref_a, rel=1e-10)


def test_golden_with_duplicate_points():
    s, t = data(2, b=5)
    s[3] = s[1]  # a zero distance off the diagonal: counted in mu, zero unit vector in the angles
    expected = 25 * ref_distance_term(s, t) + 50 * ref_angle_term(s, t)
    assert run(create("rkd"), s, t) == pytest.approx(expected, rel=1e-6)


def test_zero_when_equal_and_invariances():
    s, t = data(3, b=6, d=4)
    rkd = create("rkd")
    assert run(rkd, t, t) == pytest.approx(0.0, abs=1e-12)
    base = run(rkd, s, t)
    q1, q2 = orthogonal(4, 1), orthogonal(4, 2)
    transformed_s = 7.5 * s @ q1 + rng(4).standard_normal(4) * 3  # scale, rotation, translation
    transformed_t = 0.2 * t @ q2 - 5.0
    assert run(rkd, transformed_s, t) == pytest.approx(base, rel=1e-9)
    assert run(rkd, s, transformed_t) == pytest.approx(base, rel=1e-9)
    assert run(rkd, transformed_s, transformed_t) == pytest.approx(base, rel=1e-9)


@pytest.mark.parametrize("chunk", [3, 7, None])
def test_chunked_angle_matches_unchunked_values_and_gradients(chunk):
    s0, t = torch.randn(20, 6), torch.randn(20, 6)
    s_full = s0.clone().requires_grad_(True)
    full = rkd_angle_loss(s_full, t, chunk=None)
    full.backward()
    s_chunk = s0.clone().requires_grad_(True)
    chunked = rkd_angle_loss(s_chunk, t, chunk=chunk)
    chunked.backward()
    assert chunked.item() == pytest.approx(full.item(), rel=1e-5)
    assert torch.allclose(s_chunk.grad, s_full.grad, rtol=1e-4, atol=1e-8)


def test_angle_anchors_subsample_the_vertices():
    s, t = data(5, b=7)
    torch.manual_seed(11)
    vertices = torch.randperm(7)[:3].tolist()
    torch.manual_seed(11)
    loss = run(create("rkd", distance_weight=0, angle_anchors=3), s, t)
    assert loss == pytest.approx(50 * ref_angle_term(s, t, vertices), rel=1e-10)
    # as many anchors as samples: the exact term
    assert run(create("rkd", distance_weight=0, angle_anchors=7), s, t) == pytest.approx(
        50 * ref_angle_term(s, t), rel=1e-10
    )


def test_batch_512_by_512_chunked_with_anchor_subsampling():
    # the production size: checkpointed chunks of 4 vertices out of 16 sampled anchors, full width
    s = torch.randn(512, 512, requires_grad=True)
    t = torch.randn(512, 512)
    rkd = create("rkd", angle_chunk=4, angle_anchors=16)
    loss = rkd(feats(s), feats(t), torch.zeros(512))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_gradcheck():
    s = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 3, dtype=torch.float64)
    rkd = create("rkd", angle_chunk=2)
    assert torch.autograd.gradcheck(lambda x: rkd(feats(x), feats(t), torch.zeros(5)), (s,))


def test_no_nan_gradient_at_coincident_points():
    s = torch.randn(4, 3, dtype=torch.float64)
    s[2] = s[0]
    s.requires_grad_(True)
    create("rkd")(feats(s), feats(torch.randn(4, 3, dtype=torch.float64)), torch.zeros(4)).backward()
    assert torch.isfinite(s.grad).all()


def test_bad_input():
    with pytest.raises(ValueError, match="at least 2 samples"):
        create("rkd")(feats(np.ones((1, 3))), feats(np.ones((1, 3))), torch.zeros(1))
    with pytest.raises(ValueError, match="angle_anchors"):
        create("rkd", angle_anchors=0)
