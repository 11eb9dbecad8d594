"""ShrinkTeaNet angular distillation: golden values, stage terms, invariances, gradcheck."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ekd.distill import create
from tests.distill.utils import feats, rng


def reference_angular(a: np.ndarray, b: np.ndarray) -> float:
    total = 0.0
    for x, y in zip(a.reshape(len(a), -1), b.reshape(len(b), -1)):
        total += 1.0 - float(x @ y) / (np.linalg.norm(x) * np.linalg.norm(y))
    return total / len(a)


def test_golden_embedding_only_and_hand_value():
    f_s, f_t = rng(1).standard_normal((4, 3)), rng(2).standard_normal((4, 3))
    angular = create("shrinkteanet")
    assert angular.requires == frozenset({"embedding"})
    assert angular(feats(f_s), feats(f_t), torch.zeros(4)).item() == pytest.approx(
        reference_angular(f_s, f_t), rel=1e-12
    )
    # orthogonal -> 1, opposite -> 2, equal direction -> 0
    hand = angular(
        feats([[1.0, 0], [1.0, 0], [2.0, 2.0]]), feats([[0, 3.0], [-1.0, 0], [1.0, 1.0]]), torch.zeros(3)
    )
    assert hand.item() == pytest.approx(1.0)


def test_stage_terms_are_added():
    f_s, f_t = rng(3).standard_normal((3, 4)), rng(4).standard_normal((3, 4))
    m_s, m_t = rng(5).standard_normal((3, 2, 2, 2)), rng(6).standard_normal((3, 2, 2, 2))
    angular = create("shrinkteanet", stages=["stage3"])
    assert angular.requires == frozenset({"embedding", "stages.stage3"})
    loss = angular(feats(f_s, stage3=m_s), feats(f_t, stage3=m_t), torch.zeros(3))
    expected = reference_angular(f_s, f_t) + reference_angular(m_s, m_t)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert set(angular.log_items()) == {"embedding", "stage3"}


def test_stage_regressor_only_when_channels_differ():
    angular = create(
        "shrinkteanet",
        stages=["stage3", "stage4"],
        student_shapes={"stage3": (2, 2, 2), "stage4": (3, 1, 1)},
        teacher_shapes={"stage3": (2, 2, 2), "stage4": (5, 1, 1)},
    )
    assert set(angular.regressors) == {"stage4"}
    loss = angular(
        feats(torch.randn(4, 3), stage3=torch.randn(4, 2, 2, 2), stage4=torch.randn(4, 3, 1, 1)),
        feats(torch.randn(4, 3), stage3=torch.randn(4, 2, 2, 2), stage4=torch.randn(4, 5, 1, 1)),
        torch.zeros(4),
    )
    assert torch.isfinite(loss)


def test_zero_at_equality_and_positive_scale_invariance():
    f, g = rng(7).standard_normal((4, 3)), rng(8).standard_normal((4, 3))
    m = rng(9).standard_normal((4, 2, 1, 2))
    scales = rng(10).uniform(0.1, 10, size=(4, 1))
    angular = create("shrinkteanet", stages=["stage1"])
    assert angular(
        feats(f * scales, stage1=m * 3), feats(f, stage1=m), torch.zeros(4)
    ).item() == pytest.approx(0.0, abs=1e-14)
    base = angular(feats(f, stage1=m), feats(g, stage1=-m), torch.zeros(4)).item()
    scaled = angular(feats(f * scales, stage1=m * 2), feats(g / scales, stage1=-m * 5), torch.zeros(4)).item()
    assert scaled == pytest.approx(base, rel=1e-12)


def test_gradcheck():
    angular = create("shrinkteanet", stages=["stage2"])
    f_t, m_t = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 2, 2, 2, dtype=torch.float64)
    f_s = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    m_s = torch.randn(3, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: angular(feats(a, stage2=b), feats(f_t, stage2=m_t), torch.zeros(3)), (f_s, m_s)
    )


def test_bad_input():
    with pytest.raises(ValueError, match="unknown stages"):
        create("shrinkteanet", stages=["stage5"])
    with pytest.raises(ValueError, match="listed twice"):
        create("shrinkteanet", stages=["stage1", "stage1"])
