"""FitNet: golden values with and without regressor, spatial pooling, warm-up, gradcheck, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ekd.distill import create
from tests.distill.utils import feats, rng


def reference_mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(sum((x - y) ** 2 for x, y in zip(a.ravel(), b.ravel())) / a.size)


def reference_regressor(x: np.ndarray, weight: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """1x1 conv (C_t x C_s weight, no bias) then BatchNorm in training mode (gamma 1, beta 0)."""
    n, c_s, h, w = x.shape
    y = np.zeros((n, weight.shape[0], h, w))
    for i in range(n):
        for o in range(weight.shape[0]):
            for c in range(c_s):
                y[i, o] += weight[o, c] * x[i, c]
    mean = y.mean(axis=(0, 2, 3), keepdims=True)
    var = ((y - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True)  # biased, as BN normalises
    return (y - mean) / np.sqrt(var + eps)


def test_golden_same_shapes_default_stage4():
    s, t = rng(1).standard_normal((2, 3, 2, 2)), rng(2).standard_normal((2, 3, 2, 2))
    fitnet = create("fitnet")
    assert fitnet.requires == frozenset({"stages.stage4"}) and fitnet.regressor is None
    loss = fitnet(feats(stage4=s), feats(stage4=t), torch.zeros(2))
    assert loss.item() == pytest.approx(reference_mse(s, t), rel=1e-12)
    assert fitnet(feats(stage4=t), feats(stage4=t), torch.zeros(2)).item() == 0.0


def test_regressor_when_channels_differ():
    fitnet = create(
        "fitnet", stage="stage2", student_shapes={"stage2": [2, 3, 3]}, teacher_shapes={"stage2": (4, 3, 3)}
    ).double()
    assert fitnet.requires == frozenset({"stages.stage2"})
    conv = fitnet.regressor[0]
    assert tuple(conv.weight.shape) == (4, 2, 1, 1)
    s, t = rng(3).standard_normal((3, 2, 3, 3)), rng(4).standard_normal((3, 4, 3, 3))
    loss = fitnet(feats(stage2=s), feats(stage2=t), torch.zeros(3))
    expected = reference_mse(reference_regressor(s, conv.weight.detach().numpy()[:, :, 0, 0]), t)
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    # the regressor is trainable (part of the student side), the teacher side gets no gradient
    loss.backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def test_spatial_mismatch_pools_the_larger_map():
    s, t = rng(5).standard_normal((2, 3, 4, 4)), rng(6).standard_normal((2, 3, 2, 2))
    pooled = np.zeros((2, 3, 2, 2))
    for i in range(2):
        for j in range(2):
            pooled[:, :, i, j] = s[:, :, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean(axis=(2, 3))
    loss = create("fitnet")(feats(stage4=s), feats(stage4=t), torch.zeros(2))
    assert loss.item() == pytest.approx(reference_mse(pooled, t), rel=1e-12)


def test_hint_only_warmup():
    assert not create("fitnet").hint_only(0)
    fitnet = create("fitnet", warmup_steps=3)
    assert [fitnet.hint_only(step) for step in range(5)] == [True, True, True, False, False]


def test_gradcheck_with_regressor():
    fitnet = create(
        "fitnet", student_shapes={"stage4": (2, 2, 2)}, teacher_shapes={"stage4": (3, 2, 2)}
    ).double()
    t = torch.randn(3, 3, 2, 2, dtype=torch.float64)
    s = torch.randn(3, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    weight = fitnet.regressor[0].weight
    assert torch.autograd.gradcheck(
        lambda x, w: fitnet(feats(stage4=x), feats(stage4=t), torch.zeros(3)), (s, weight)
    )


def test_bad_input():
    with pytest.raises(ValueError, match="unknown stage 'stage9'"):
        create("fitnet", stage="stage9")
    with pytest.raises(ValueError, match="student_shapes= and teacher_shapes="):
        create("fitnet")(
            feats(stage4=np.zeros((2, 2, 1, 1))), feats(stage4=np.zeros((2, 3, 1, 1))), torch.zeros(2)
        )
    with pytest.raises(ValueError, match=r"needs \['stages.stage4'\] from the teacher"):
        create("fitnet")(
            feats(stage4=np.zeros((2, 2, 1, 1))), feats(stage3=np.zeros((2, 2, 1, 1))), torch.zeros(2)
        )
    with pytest.raises(ValueError, match="teacher_shapes has no entry 'stage4'"):
        create("fitnet", student_shapes={"stage4": (1, 1, 1)}, teacher_shapes={"stage3": (2, 1, 1)})
    with pytest.raises(ValueError, match="warmup_steps"):
        create("fitnet", warmup_steps=-1)
