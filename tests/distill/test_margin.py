"""MarginDistillation: golden values via arccos (an independent route), margin clamping, the theta + m > pi
branch, centres handling, gradcheck, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ekd.distill import create
from tests.distill.utils import feats, rng, unit_rows


def ref_margins(f_t, centres, labels, m_min=0.2, m_max=0.5):
    ut, w = unit_rows(f_t), unit_rows(centres)
    c = [float(ut[i] @ w[y]) for i, y in enumerate(labels)]
    c_max = max(max(c), 1e-12)
    return [min(max(m_min + (m_max - m_min) * v / c_max, m_min), m_max) for v in c]


def ref_margin_loss(f_s, f_t, centres, labels, scale=64.0, m_min=0.2, m_max=0.5) -> float:
    us, w = unit_rows(f_s), unit_rows(centres)
    margins = ref_margins(f_t, centres, labels, m_min, m_max)
    total = 0.0
    for i, y in enumerate(labels):
        logits = []
        for j in range(len(w)):
            cos = float(us[i] @ w[j])
            if j == y:
                theta, m = math.acos(cos), margins[i]
                cos = math.cos(theta + m) if theta + m <= math.pi else cos - m * math.sin(math.pi - m)
            logits.append(scale * cos)
        top = max(logits)
        total += -(logits[y] - top - math.log(sum(math.exp(v - top) for v in logits)))
    return total / len(labels)


def make(seed=0, b=4, c=5, d=3):
    r = rng(seed)
    return (
        r.standard_normal((b, d)),
        r.standard_normal((b, d)),
        r.standard_normal((c, d)),
        list(r.integers(0, c, b)),
    )


def objective_with(centres, **hparams):
    objective = create("margin", **hparams)
    objective.set_teacher_centres(torch.tensor(centres))
    return objective


def run(objective, f_s, f_t, labels):
    return objective(feats(f_s), feats(f_t), torch.tensor(labels)).item()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_golden(seed):
    f_s, f_t, centres, labels = make(seed)
    f_t[0] = unit_rows(centres)[labels[0]] * 2.0  # one sample exactly on its centre: c = 1
    expected = ref_margin_loss(f_s, f_t, centres, labels)
    assert run(objective_with(centres), f_s, f_t, labels) == pytest.approx(expected, rel=1e-9)


def test_other_scale_and_margins():
    f_s, f_t, centres, labels = make(3)
    f_t = unit_rows(centres)[labels] + 0.3 * rng(4).standard_normal(f_t.shape)
    expected = ref_margin_loss(f_s, f_t, centres, labels, scale=16.0, m_min=0.1, m_max=0.4)
    objective = objective_with(centres, scale=16.0, margin_min=0.1, margin_max=0.4)
    assert run(objective, f_s, f_t, labels) == pytest.approx(expected, rel=1e-9)


def test_margins_are_clamped_and_follow_the_teacher():
    centres = np.eye(3)
    labels = [0, 1, 2]
    # teacher cosines to the own centre: 1, 0.5, -0.5 -> margins 0.5, 0.35, clamp(0.05) = 0.2
    f_t = np.array([[1.0, 0, 0], [0, 0.5, math.sqrt(0.75)], [0, 0, -1.0]])
    f_t[2] = [math.sqrt(0.75), 0, -0.5]
    objective = objective_with(centres)
    margins = objective.sample_margins(torch.tensor(f_t), torch.tensor(labels))
    assert margins.tolist() == pytest.approx([0.5, 0.35, 0.2])
    # every teacher cosine <= 0: all margins are M_min
    assert objective.sample_margins(-torch.tensor(f_t).abs(), torch.tensor(labels)).tolist() == pytest.approx(
        [0.2] * 3
    )


def test_theta_plus_margin_beyond_pi_uses_the_linear_fallback():
    centres = np.eye(2)
    f_s = np.array([[-1.0, 0.02]])  # theta ~ pi for class 0
    f_t = np.array([[1.0, 0.0]])  # c = 1 -> m = 0.5
    expected = ref_margin_loss(f_s, f_t, centres, [0])
    assert math.acos(unit_rows(f_s)[0, 0]) + 0.5 > math.pi
    assert run(objective_with(centres), f_s, f_t, [0]) == pytest.approx(expected, rel=1e-9)


def test_centres_are_frozen_normalised_and_not_saved():
    objective = objective_with(np.array([[3.0, 4.0], [0.0, -2.0]]))
    assert objective.needs_teacher_centres and not objective.relational
    assert torch.allclose(objective.centres, torch.tensor([[0.6, 0.8], [0.0, -1.0]], dtype=torch.float64))
    assert "centres" not in objective.state_dict()
    assert not any(p.requires_grad for p in objective.parameters())


def test_gradcheck():
    f_s, f_t, centres, labels = make(5)
    objective = objective_with(centres)
    x = torch.tensor(f_s, requires_grad=True)
    assert torch.autograd.gradcheck(lambda e: objective(feats(e), feats(f_t), torch.tensor(labels)), (x,))


def test_bad_input():
    f_s, f_t, centres, labels = make(6)
    with pytest.raises(RuntimeError, match="set_teacher_centres"):
        create("margin")(feats(f_s), feats(f_t), torch.tensor(labels))
    objective = objective_with(centres)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
        objective(feats(f_s), feats(f_t), torch.tensor([0, 1, 2, 7]))
    with pytest.raises(ValueError, match="N x 3"):
        objective(feats(np.ones((4, 2))), feats(np.ones((4, 2))), torch.tensor(labels))
    with pytest.raises(ValueError, match=r"classes \[1\] are zero vectors"):
        create("margin").set_teacher_centres(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="C x D"):
        create("margin").set_teacher_centres(torch.ones(3))
    with pytest.raises(ValueError, match="margin_min"):
        create("margin", margin_min=0.6)
