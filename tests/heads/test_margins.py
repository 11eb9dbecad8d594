"""Margin heads against logits computed by hand in float64 from the published formulas."""

import math

import numpy as np
import pytest
import torch

from ekd import heads

D, C = 3, 4


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(5, D)) * 3.0
    w = rng.normal(size=(C, D))
    return torch.tensor(x), torch.tensor(w), x, w


def _head(name: str, weight: torch.Tensor, **hparams) -> heads.Head:
    head = heads.create(name, D, C, **hparams).double()
    with torch.no_grad():
        head.weight.copy_(weight)
    return head


def _np_cos(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    xn = x / np.sqrt((x**2).sum(1, keepdims=True))
    wn = w / np.sqrt((w**2).sum(1, keepdims=True))
    return xn @ wn.T


def _with_target(cos: np.ndarray, labels: np.ndarray, fn) -> np.ndarray:
    out = cos.copy()
    for i, y in enumerate(labels):
        out[i, y] = fn(cos[i, y], i)
    return out


LABELS = np.array([0, 1, 2, 3, 1])


def test_registry_lists_every_head_and_rejects_unknown_names():
    listed = heads.list_heads()  # other modules may register more heads (e.g. adaface)
    assert listed == sorted(listed)
    assert {"arcface", "combined", "cosface", "normface", "softmax", "sphereface"} <= set(listed)
    with pytest.raises(ValueError, match="unknown recognition head 'arcfce'.*arcface, combined"):
        heads.create("arcfce", D, C)
    with pytest.raises(ValueError, match="'cosface' has no hyper-parameter.*'margin'.*accepts"):
        heads.create("cosface", D, C, margin=0.3)
    with pytest.raises(ValueError, match="'arcface': m must be below pi"):
        heads.create("arcface", D, C, m=4.0)
    with pytest.raises(ValueError, match="scale must be a positive number"):
        heads.create("normface", D, C, scale=-1.0)


def test_every_head_has_weight_and_validates_inputs():
    for name in heads.list_heads():
        head = heads.create(name, D, C)
        assert head.weight.shape == (C, D)
        assert head(torch.randn(2, D)).shape == (2, C)
        with pytest.raises(ValueError, match=f"expects embeddings of shape N x {D}"):
            head(torch.randn(2, D + 1))
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\]"):
            head(torch.randn(2, D), torch.tensor([0, 4]))
        with pytest.raises(ValueError, match="integer tensor"):
            head(torch.randn(2, D), torch.tensor([0.0, 1.0]))


def test_softmax_is_linear_with_bias():
    xt, wt, x, w = _inputs()
    head = _head("softmax", wt)
    b = np.array([0.1, -0.2, 0.3, 0.0])
    with torch.no_grad():
        head.bias.copy_(torch.tensor(b))
    expected = x @ w.T + b
    np.testing.assert_allclose(head(xt, torch.tensor(LABELS)).detach().numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(head(xt).detach().numpy(), expected, rtol=1e-12)


def test_normface_feature_norm_or_fixed_scale_and_scale_invariance_of_centres():
    xt, wt, x, w = _inputs()
    norms = np.sqrt((x**2).sum(1, keepdims=True))
    np.testing.assert_allclose(_head("normface", wt)(xt).detach().numpy(), norms * _np_cos(x, w), rtol=1e-12)
    head = _head("normface", wt * 7.0, scale=30.0)  # ||W_j|| does not matter
    got = head(xt, torch.tensor(LABELS)).detach().numpy()
    np.testing.assert_allclose(got, 30.0 * _np_cos(x, w), rtol=1e-12)


def test_cosface_target_logit():
    xt, wt, x, w = _inputs()
    got = _head("cosface", wt)(xt, torch.tensor(LABELS)).detach().numpy()
    expected = 64.0 * _with_target(_np_cos(x, w), LABELS, lambda c, i: c - 0.35)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    np.testing.assert_allclose(_head("cosface", wt)(xt).detach().numpy(), 64.0 * _np_cos(x, w), rtol=1e-12)


def _unit(angle: float) -> list[float]:
    return [math.cos(angle), math.sin(angle), 0.0]


def test_arcface_target_logit_including_the_branch_past_pi_minus_m():
    m = 0.5
    # centres along the axes; embeddings at chosen angles theta from centre 0 (the target)
    weight = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [-1.0, 0, 0]], dtype=torch.float64)
    thetas = [0.3, 1.2, math.pi - m - 0.05, math.pi - m + 0.05, 3.0]
    x = torch.tensor([_unit(t) for t in thetas], dtype=torch.float64) * 2.5
    labels = torch.zeros(len(thetas), dtype=torch.long)
    got = _head("arcface", weight)(x, labels).detach().numpy()[:, 0]
    expected = []
    for t in thetas:
        c = math.cos(t)
        expected.append(
            64 * (math.cos(t + m) if c > math.cos(math.pi - m) else c - m * math.sin(math.pi - m))
        )
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    # the last two are past the threshold: cos theta - m sin m, strictly below cos(pi) = -1 there
    assert got[3] < -64 and got[4] < got[3]
    easy = _head("arcface", weight, easy_margin=True)(x, labels).detach().numpy()[:, 0]
    expected_easy = [64 * (math.cos(t + m) if math.cos(t) > 0 else math.cos(t)) for t in thetas]
    np.testing.assert_allclose(easy, expected_easy, rtol=1e-9)


def test_arcface_random_inputs_and_margin_free_logits():
    xt, wt, x, w = _inputs(3)
    m, s = 0.5, 64.0
    cos = _np_cos(x, w)

    def target(c, i):
        return math.cos(math.acos(c) + m) if c > math.cos(math.pi - m) else c - m * math.sin(math.pi - m)

    got = _head("arcface", wt)(xt, torch.tensor(LABELS)).detach().numpy()
    np.testing.assert_allclose(got, s * _with_target(cos, LABELS, target), rtol=1e-9)
    np.testing.assert_allclose(_head("arcface", wt)(xt).detach().numpy(), s * cos, rtol=1e-12)


def insightface_arcface_logits(x: torch.Tensor, w: torch.Tensor, labels: torch.Tensor, s: float, m: float):
    """insightface arcface_torch as of 7fadd420: ``partial_fc_v2.py`` (cosines clamped to [-1, 1],
    L163) then ``losses.py`` ``CombinedMarginLoss(s, m1=1, m2=m, m3=0).forward``, restated."""
    logits = torch.nn.functional.linear(torch.nn.functional.normalize(x), torch.nn.functional.normalize(w))
    logits = logits.clamp(-1, 1)
    index_positive = torch.where(labels != -1)[0]
    target_logit = logits[index_positive, labels[index_positive].view(-1)]
    with torch.no_grad():
        target_logit.arccos_()
        logits.arccos_()
        final_target_logit = target_logit + m
        logits[index_positive, labels[index_positive].view(-1)] = final_target_logit
        logits.cos_()
    return logits * s


def _head_fn(name: str, **hparams):
    """The head's logits as a function of (x, W, labels), differentiable w.r.t. both x and W."""
    head = heads.create(name, D, C, **hparams).double()
    return lambda x, w, labels: head.compute_logits(x, w, labels)


def _logits_and_grads(fn, x: torch.Tensor, w: torch.Tensor, labels: torch.Tensor, cross_entropy: bool = True):
    """Logits, and the gradients w.r.t. x and W of a loss that weighs every logit differently
    (plus the cross-entropy, whose gradient also depends on the logits' values, when asked)."""
    x, w = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    logits = fn(x, w, labels)
    probe = torch.linspace(-1.0, 2.0, logits.numel(), dtype=logits.dtype).reshape(logits.shape)
    loss = (logits * probe).sum()
    if cross_entropy:
        loss = loss + torch.nn.functional.cross_entropy(logits, labels, ignore_index=-1)
    loss.backward()
    return logits.detach(), x.grad, w.grad


@pytest.mark.parametrize("m", [0.5, 0.4, 1.2])
def test_arcface_straight_through_is_insightface_combined_margin_everywhere(m):
    s = 64.0
    # target angles across [0, pi], several past pi - m (where the default rule switches to the fix)
    thetas = [0.0, 0.3, 1.2, math.pi - m - 0.05, math.pi - m + 0.05, math.pi - m + 0.3, 3.0, math.pi]
    x = torch.tensor([_unit(t) for t in thetas], dtype=torch.float64) * 2.5
    off_plane = np.random.default_rng(1).normal(size=(len(thetas) - 2, D))
    x[1:-1] += 0.01 * torch.tensor(off_plane)
    weight = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [-0.6, 0.8, 0]], dtype=torch.float64) * 3
    on_centre_0 = torch.zeros(len(thetas), dtype=torch.long)  # x[0] at theta 0, x[-1] at pi (to rounding)
    # -1: the target class is not among these centres (a shard of the head), no margin on that row
    for labels in (on_centre_0, torch.tensor([0, 1, 0, -1, 3, 0, 2, -1])):
        got = _logits_and_grads(_head_fn("arcface", s=s, m=m, straight_through=True), x, weight, labels)
        ref = _logits_and_grads(lambda a, b, c: insightface_arcface_logits(a, b, c, s, m), x, weight, labels)
        for g, r in zip(got, ref):
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)
    # past pi - m the value is s cos(theta + m) (rising again), not the default rule's
    value = _head_fn("arcface", s=s, m=m, straight_through=True)(x, weight, on_centre_0)[:, 0].numpy()
    cos = _np_cos(x.numpy(), weight.numpy())[:, 0]
    np.testing.assert_allclose(value, s * np.cos(np.arccos(np.clip(cos, -1, 1)) + m), rtol=1e-10, atol=1e-10)
    default = _head_fn("arcface", s=s, m=m)(x, weight, on_centre_0)[:, 0].detach().numpy()
    past = cos <= math.cos(math.pi - m)
    assert past.sum() >= 3
    # (at cos = 1 exactly the default rule's clamped acos, kept for a finite gradient, is ~1e-6 off)
    inside = ~past & (cos < 1 - 1e-9)
    np.testing.assert_allclose(value[inside], default[inside], rtol=1e-9, atol=1e-9)
    assert np.all(value[past] > default[past])  # the fix lies below cos(theta + m) there
    assert value[-1] == pytest.approx(-s * math.cos(m), rel=1e-12)  # theta = pi: s cos(pi + m)


def test_arcface_straight_through_gradient_is_that_of_s_cos_theta_default_is_exact():
    xt, wt, x, w = _inputs(1)
    labels = torch.tensor(LABELS)
    exact = _logits_and_grads(_head_fn("arcface"), xt, wt, labels, cross_entropy=False)
    straight = _logits_and_grads(
        _head_fn("arcface", straight_through=True), xt, wt, labels, cross_entropy=False
    )
    # s cos theta for every logit, whose gradient the straight-through rule takes: NormFace with s = 64
    plain = _logits_and_grads(_head_fn("normface", scale=64.0), xt, wt, labels, cross_entropy=False)
    torch.testing.assert_close(straight[1], plain[1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(straight[2], plain[2], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(exact[1], straight[1])  # the default rule differentiates the margin
    inside = torch.tensor(np.arccos(_np_cos(x, w)) + 0.5 < math.pi)  # there both rules agree in value
    assert inside.sum() > 10
    torch.testing.assert_close(exact[0][inside], straight[0][inside], rtol=1e-10, atol=1e-10)


def test_arcface_straight_through_with_easy_margin_keeps_the_easy_value():
    weight = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [-1.0, 0, 0]], dtype=torch.float64)
    thetas = [0.3, 1.2, 2.0, 3.0]
    x = torch.tensor([_unit(t) for t in thetas], dtype=torch.float64)
    labels = torch.zeros(len(thetas), dtype=torch.long)
    got = _head("arcface", weight, easy_margin=True, straight_through=True)(x, labels)[:, 0].detach().numpy()
    expected = [64 * (math.cos(t + 0.5) if math.cos(t) > 0 else math.cos(t)) for t in thetas]
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def _np_psi(theta: float, m: int) -> float:
    k = min(int(math.floor(m * theta / math.pi)), m - 1)
    return (-1) ** k * math.cos(m * theta) - 2 * k


def test_sphereface_psi_matches_formula_and_is_monotonic_decreasing():
    thetas = np.linspace(0.0, math.pi, 2001)
    psi = heads.sphereface_psi(torch.tensor(np.cos(thetas)), 4).numpy()
    np.testing.assert_allclose(psi, [_np_psi(t, 4) for t in thetas], atol=1e-9)
    assert np.all(np.diff(psi) < 0)
    assert psi[0] == pytest.approx(1.0) and psi[-1] == pytest.approx(-7.0)  # (-1)^3 cos(4 pi) - 6
    for m in (1, 2, 3):
        values = heads.sphereface_psi(torch.tensor(np.cos(thetas)), m).numpy()
        np.testing.assert_allclose(values, [_np_psi(t, m) for t in thetas], atol=1e-9)
        assert np.all(np.diff(values) < 0)


def test_sphereface_lambda_schedule_values():
    head = heads.create("sphereface", D, C)
    assert head.lambda_at(0) == 1000.0
    assert head.lambda_at(1) == pytest.approx(1000.0 / 1.12)
    assert head.lambda_at(100) == pytest.approx(1000.0 / 13.0)
    assert head.lambda_at(1649) == pytest.approx(1000.0 / (1 + 0.12 * 1649))  # 5.0506...
    assert head.lambda_at(1700) == 5.0 and head.lambda_at(10**6) == 5.0
    custom = heads.create("sphereface", D, C, base=10.0, gamma=1.0, power=2.0, lambda_min=0.5)
    assert custom.lambda_at(1) == pytest.approx(10.0 / 4.0) and custom.lambda_at(9) == 0.5


def test_sphereface_target_logit_and_counter():
    xt, wt, x, w = _inputs(2)
    head = _head("sphereface", wt)
    labels = torch.tensor(LABELS)
    norms = np.sqrt((x**2).sum(1))
    cos = _np_cos(x, w)
    for step in (1, 2, 3):
        got = head(xt, labels).detach().numpy()  # training mode: advances first, then uses it
        lam = 1000.0 / (1 + 0.12 * step)

        def target(c, i, lam=lam):
            return (lam * c + _np_psi(math.acos(c), 4)) / (1 + lam)

        np.testing.assert_allclose(got, norms[:, None] * _with_target(cos, LABELS, target), rtol=1e-9)
        assert int(head.iteration) == step
    head(xt)  # margin-free: no advance
    head.eval()
    head(xt, labels)  # evaluation: no advance
    assert int(head.iteration) == 3
    np.testing.assert_allclose(head(xt).detach().numpy(), norms[:, None] * cos, rtol=1e-12)
    assert "iteration" in head.state_dict()


def test_sphereface_without_annealing_is_pure_a_softmax():
    xt, wt, x, w = _inputs(4)
    head = _head("sphereface", wt, base=0.0, lambda_min=0.0)
    got = head(xt, torch.tensor(LABELS)).detach().numpy()
    norms = np.sqrt((x**2).sum(1))
    expected = _with_target(_np_cos(x, w), LABELS, lambda c, i: _np_psi(math.acos(c), 4))
    np.testing.assert_allclose(got, norms[:, None] * expected, rtol=1e-9)


def test_combined_margin_formula_and_special_cases():
    xt, wt, x, w = _inputs(5)
    labels = torch.tensor(LABELS)
    cos = _np_cos(x, w)
    m1, m2, m3, s = 2.0, 0.3, 0.1, 10.0

    def target(c, i):
        u = m1 * math.acos(c) + m2
        k = math.floor(u / math.pi)
        return (-1) ** k * math.cos(u) - 2 * k - m3

    got = _head("combined", wt, s=s, m1=m1, m2=m2, m3=m3)(xt, labels).detach().numpy()
    np.testing.assert_allclose(got, s * _with_target(cos, LABELS, target), rtol=1e-9)
    cosface = _head("cosface", wt, m=0.4)(xt, labels)
    torch.testing.assert_close(_head("combined", wt, m1=1.0, m2=0.0, m3=0.4)(xt, labels), cosface)
    # (1, 0.5, 0) is ArcFace wherever theta + m <= pi
    arc = _head("arcface", wt)(xt, labels)
    comb = _head("combined", wt)(xt, labels)
    inside = torch.tensor(np.arccos(cos) + 0.5 <= math.pi)
    torch.testing.assert_close(comb[inside], arc[inside])


def test_combined_continuation_is_monotonic_and_continuous():
    weight = torch.eye(D, dtype=torch.float64)[[0, 1, 2, 0]]
    thetas = np.linspace(0.0, math.pi, 721)
    x = torch.tensor([_unit(t) for t in thetas], dtype=torch.float64)
    labels = torch.zeros(len(thetas), dtype=torch.long)
    for m1, m2 in ((1.0, 0.5), (2.0, 0.3), (1.35, 0.0)):
        target = _head("combined", weight, s=1.0, m1=m1, m2=m2)(x, labels)[:, 0].detach().numpy()
        assert np.all(np.diff(target) < 0)
        assert np.max(np.abs(np.diff(target))) < 0.05  # no jumps on a 0.25 degree grid


@pytest.mark.parametrize("name", ["normface", "sphereface", "cosface", "arcface", "combined", "softmax"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_are_finite_at_cos_plus_minus_one(name, dtype):
    head = heads.create(name, D, C).to(dtype)
    with torch.no_grad():
        head.weight.copy_(torch.eye(D, dtype=dtype)[[0, 1, 2, 0]])
    # cos theta_y = +1 exactly (x on its centre) and -1 exactly (x opposite to it)
    x = torch.tensor([[2.0, 0, 0], [0, -3.0, 0], [0, 0, 1.0], [-1.0, 0, 0]], dtype=dtype, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3])
    logits = head(x, labels)
    torch.nn.functional.cross_entropy(logits, labels).backward()
    assert torch.isfinite(logits).all()
    assert torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()


def test_margin_free_logits_do_not_depend_on_labels_argument_none():
    xt, wt, x, w = _inputs(6)
    for name in ("cosface", "arcface", "combined"):
        np.testing.assert_allclose(_head(name, wt)(xt).detach().numpy(), 64 * _np_cos(x, w), rtol=1e-12)
