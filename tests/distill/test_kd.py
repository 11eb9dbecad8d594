"""KD: golden values, limiting cases, gradcheck and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ekd.distill import create
from tests.distill.utils import feats, rng


def reference_kd(z_s: np.ndarray, z_t: np.ndarray, temperature: float) -> float:
    total = 0.0
    for row_s, row_t in zip(z_s, z_t):
        p_s = np.exp(row_s / temperature) / np.exp(row_s / temperature).sum()
        p_t = np.exp(row_t / temperature) / np.exp(row_t / temperature).sum()
        total += sum(pt * np.log(pt / ps) for pt, ps in zip(p_t, p_s))
    return temperature**2 * total / len(z_s)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_golden(temperature):
    z_s, z_t = rng(1).standard_normal((3, 4)) * 3, rng(2).standard_normal((3, 4)) * 3
    loss = create("kd", temperature=temperature)(feats(logits=z_s), feats(logits=z_t), torch.zeros(3))
    assert loss.item() == pytest.approx(reference_kd(z_s, z_t, temperature), rel=1e-10)


def test_default_temperature_is_4_and_hand_value():
    # two classes, one sample: p_t = (1/2, 1/2), p_s = softmax((4 ln 3, 0) / 4) = (3/4, 1/4)
    z_s = np.array([[4 * np.log(3.0), 0.0]])
    loss = create("kd")(feats(logits=z_s), feats(logits=np.zeros((1, 2))), torch.zeros(1))
    expected = 16 * (0.5 * np.log(0.5 / 0.75) + 0.5 * np.log(0.5 / 0.25))
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_zero_when_equal_and_shift_invariant():
    z = rng(3).standard_normal((4, 5))
    kd = create("kd")
    assert kd(feats(logits=z), feats(logits=z), torch.zeros(4)).item() == pytest.approx(0.0, abs=1e-14)
    # softmax ignores a per-sample constant shift of the logits
    shifted = z + rng(4).standard_normal((4, 1)) * 10
    assert kd(feats(logits=shifted), feats(logits=z), torch.zeros(4)).item() == pytest.approx(0.0, abs=1e-12)


def test_high_temperature_limit_is_logit_matching():
    # T^2 KL -> (1 / 2C) sum_c (d_c - mean d)^2 as T -> inf, d = z_t - z_s (Hinton et al., sec. 2.1)
    z_s, z_t = rng(5).standard_normal((3, 6)), rng(6).standard_normal((3, 6))
    d = z_t - z_s
    d = d - d.mean(axis=1, keepdims=True)
    expected = ((d**2).sum(axis=1) / (2 * 6)).mean()
    loss = create("kd", temperature=1e3)(feats(logits=z_s), feats(logits=z_t), torch.zeros(3))
    assert loss.item() == pytest.approx(expected, rel=1e-3)


def test_gradcheck():
    z_t = torch.randn(3, 4, dtype=torch.float64)
    kd = create("kd")

    def fn(z_s):
        return kd(feats(logits=z_s), feats(logits=z_t), torch.zeros(3))

    assert torch.autograd.gradcheck(fn, (torch.randn(3, 4, dtype=torch.float64, requires_grad=True),))


def test_half_precision_logits_are_upcast():
    z_s, z_t = torch.randn(2, 3).half(), torch.randn(2, 3).half()
    loss = create("kd")(feats(logits=z_s), feats(logits=z_t), torch.zeros(2))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(
        reference_kd(z_s.double().numpy(), z_t.double().numpy(), 4.0), rel=1e-5
    )


def test_bad_input():
    kd = create("kd")
    with pytest.raises(ValueError, match="logits"):
        kd(feats(logits=None, embedding=np.zeros((2, 3))), feats(logits=np.zeros((2, 3))), torch.zeros(2))
    with pytest.raises(ValueError, match="shapes differ"):
        kd(feats(logits=np.zeros((2, 3))), feats(logits=np.zeros((2, 4))), torch.zeros(2))
    with pytest.raises(ValueError, match="temperature"):
        create("kd", temperature=0)
