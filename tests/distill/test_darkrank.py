"""DarkRank: golden values (hard, soft permutation, soft top-one) from explicit loops, limiting cases,
stability, gradcheck, bad input; the hard variant against TFace's ``HardDarkRank`` restated in plain
torch ops (Tencent/TFace ``recognition/tasks/ekd/distillation/darkrank.py``), value and gradient."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from ekd.distill import create
from tests.distill.utils import feats, rng, unit_rows


def ref_scores(x: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    u = unit_rows(x)
    b = len(u)
    return np.array(
        [[-alpha * math.sqrt(((u[q] - u[c]) ** 2).sum()) ** beta for c in range(b)] for q in range(b)]
    )


def ref_pl_log_prob(scores: list[float]) -> float:
    """log Plackett-Luce probability of the order in which ``scores`` are listed (plain math)."""
    total = 0.0
    for i in range(len(scores)):
        total += scores[i] - math.log(sum(math.exp(v) for v in scores[i:]))
    return total


def ref_darkrank(s, t, variant, distribution="permutation", alpha=3.0, beta=3.0, length=3) -> float:
    sc_s, sc_t = ref_scores(s, alpha, beta), ref_scores(t, alpha, beta)
    b = len(s)
    total = 0.0
    for q in range(b):
        others = sorted((c for c in range(b) if c != q), key=lambda c: -sc_t[q][c])[:length]
        ls, lt = [sc_s[q][c] for c in others], [sc_t[q][c] for c in others]
        if variant == "hard":
            total += -ref_pl_log_prob(ls)
        elif distribution == "top_one":
            ps = [math.exp(v) / sum(math.exp(w) for w in ls) for v in ls]
            pt = [math.exp(v) / sum(math.exp(w) for w in lt) for v in lt]
            total += sum(a * math.log(a / c) for a, c in zip(pt, ps))
        else:
            for perm in itertools.permutations(range(length)):
                log_pt = ref_pl_log_prob([lt[i] for i in perm])
                log_ps = ref_pl_log_prob([ls[i] for i in perm])
                total += math.exp(log_pt) * (log_pt - log_ps)
    return total / b


def run(objective, s, t):
    return objective(feats(s), feats(t), torch.zeros(len(s))).item()


@pytest.mark.parametrize(
    ("hparams", "variant", "distribution"),
    [
        ({"variant": "hard"}, "hard", None),
        ({}, "soft", "permutation"),
        ({"soft_distribution": "top_one"}, "soft", "top_one"),
    ],
)
def test_golden(hparams, variant, distribution):
    s, t = rng(1).standard_normal((6, 3)), rng(2).standard_normal((6, 3))
    expected = ref_darkrank(s, t, variant, distribution)
    assert expected > 0
    assert run(create("darkrank", **hparams), s, t) == pytest.approx(expected, rel=1e-9)


def test_golden_list_length_4_and_other_alpha_beta():
    s, t = rng(3).standard_normal((6, 4)), rng(4).standard_normal((6, 4))
    objective = create("darkrank", list_length=4, alpha=2.0, beta=2.0)
    expected = ref_darkrank(s, t, "soft", alpha=2.0, beta=2.0, length=4)
    assert run(objective, s, t) == pytest.approx(expected, rel=1e-9)


def test_limits_at_equality():
    t = rng(5).standard_normal((7, 3))
    scales = rng(6).uniform(0.5, 2.0, size=(7, 1))
    # soft: KL between identical distributions is 0 (normalised embeddings: per-sample scale is irrelevant)
    assert run(create("darkrank"), t * scales, t) == pytest.approx(0.0, abs=1e-12)
    assert run(create("darkrank", soft_distribution="top_one"), t * scales, t) == pytest.approx(
        0.0, abs=1e-12
    )
    # hard: the student's negative log-likelihood of the teacher's order stays positive
    hard = run(create("darkrank", variant="hard"), t, t)
    assert hard == pytest.approx(ref_darkrank(t, t, "hard"), rel=1e-9) and hard > 0


def test_stable_with_large_alpha_in_float32():
    s, t = torch.randn(8, 5), torch.randn(8, 5)
    for variant in ("hard", "soft"):
        s_leaf = s.clone().requires_grad_(True)
        loss = create("darkrank", variant=variant, alpha=500.0)(feats(s_leaf), feats(t), torch.zeros(8))
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(s_leaf.grad).all()


@pytest.mark.parametrize("hparams", [{"variant": "hard"}, {}, {"soft_distribution": "top_one"}])
def test_gradcheck(hparams):
    s = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 3, dtype=torch.float64)
    objective = create("darkrank", **hparams)
    assert torch.autograd.gradcheck(lambda x: objective(feats(x), feats(t), torch.zeros(5)), (s,))


def test_bad_input():
    with pytest.raises(ValueError, match="at least 4 samples"):
        create("darkrank")(feats(np.ones((3, 2))), feats(np.ones((3, 2))), torch.zeros(3))
    with pytest.raises(ValueError, match="variant"):
        create("darkrank", variant="medium")
    with pytest.raises(ValueError, match="top_one"):
        create("darkrank", list_length=8)
    assert create("darkrank", list_length=8, soft_distribution="top_one").list_length == 8


def tface_hard_darkrank(g_s: torch.Tensor, g_t: torch.Tensor, alpha=3, beta=3, permute_len=3) -> torch.Tensor:
    """TFace ``HardDarkRank.forward`` with its ``euclidean_dist`` (darkrank.py; defaults 3, 3, 3)."""

    def euclidean_dist(x, y):
        m, n = x.size(0), y.size(0)
        xx = torch.pow(x, 2).sum(1, keepdim=True).expand(m, n)
        yy = torch.pow(y, 2).sum(1, keepdim=True).expand(n, m).t()
        dist = torch.addmm(xx + yy, x, y.t(), beta=1, alpha=-2)
        return dist.clamp(min=1e-12).sqrt()

    g_s = torch.nn.functional.normalize(g_s)
    g_t = torch.nn.functional.normalize(g_t)
    score_teacher = -1 * alpha * euclidean_dist(g_t, g_t).pow(beta)
    score_student = -1 * alpha * euclidean_dist(g_s, g_s).pow(beta)
    # the teacher's ranking without its first entry (the query itself, at distance ~0)
    permute_idx = score_teacher.sort(dim=1, descending=True)[1][:, 1 : (permute_len + 1)]
    ordered_student = torch.gather(score_student, 1, permute_idx)
    suffix = [torch.logsumexp(ordered_student[:, i:], dim=1) for i in range(permute_idx.size(1))]
    log_prob = (ordered_student - torch.stack(suffix, dim=1)).sum(dim=1)
    return (-1 * log_prob).mean()


@pytest.mark.parametrize(
    ("alpha", "beta", "length", "shape_s", "shape_t"),
    [(3, 3, 3, (8, 4), (8, 6)), (2.0, 2.0, 4, (9, 3), (9, 3)), (3, 1.5, 2, (6, 5), (6, 2))],
)
def test_hard_equals_tface_hard_darkrank_value_and_gradient(alpha, beta, length, shape_s, shape_t):
    s, t = rng(31).standard_normal(shape_s) * 2.0, rng(32).standard_normal(shape_t)
    s_t = torch.tensor(s, requires_grad=True)
    objective = create("darkrank", variant="hard", alpha=alpha, beta=beta, list_length=length)
    loss = objective(feats(s_t), feats(t), torch.zeros(len(s)))
    loss.backward()
    s_ref = torch.tensor(s, requires_grad=True)
    ref = tface_hard_darkrank(s_ref, torch.tensor(t), alpha, beta, length)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    np.testing.assert_allclose(s_t.grad.numpy(), s_ref.grad.numpy(), rtol=1e-9, atol=1e-14)
    # the plain-math loop agrees with both
    assert loss.item() == pytest.approx(
        ref_darkrank(s, t, "hard", alpha=alpha, beta=beta, length=length), rel=1e-9
    )


def test_hard_equals_tface_when_the_student_is_the_teacher():
    t = rng(33).standard_normal((7, 5))
    t_t = torch.tensor(t, requires_grad=True)
    loss = create("darkrank", variant="hard")(feats(t_t), feats(t), torch.zeros(7))
    loss.backward()
    t_ref = torch.tensor(t, requires_grad=True)
    ref = tface_hard_darkrank(t_ref, torch.tensor(t))
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12) and loss.item() > 0
    np.testing.assert_allclose(t_t.grad.numpy(), t_ref.grad.numpy(), rtol=1e-9, atol=1e-14)
