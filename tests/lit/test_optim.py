"""Optimisers, no-decay groups and lr schedules against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ekd.lit.optim import (
    OptimConfig,
    ScheduleConfig,
    as_optim_config,
    as_schedule_config,
    build_optimizer,
    build_scheduler,
    param_groups,
)


def _lrs(
    cfg: ScheduleConfig, steps: int, steps_per_epoch: int, total_steps: int, lr: float = 0.1
) -> list[float]:
    """The lr of every optimizer step, stepping the scheduler as Lightning does (once per step)."""
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=lr)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch, total_steps)
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_step_schedule_epoch_milestones():
    # 10 steps per epoch, x0.1 at epoch 1 (step 10) and epoch 2.5 (step 25)
    lrs = _lrs(ScheduleConfig(name="step", milestones=(1, 2.5), gamma=0.1), 30, 10, 30)
    expected = [0.1] * 10 + [0.01] * 15 + [0.001] * 5
    assert lrs == pytest.approx(expected, rel=1e-12)


def test_step_schedule_with_warmup_and_floor():
    cfg = ScheduleConfig(
        name="step", milestones=(1, 2), gamma=0.1, warmup_epochs=0.5, warmup_start_factor=0.1
    )
    lrs = _lrs(cfg, 25, 10, 30)
    # warm-up over 5 steps: 0.1 * (0.1 + 0.9 s / 5)
    for s in range(5):
        assert lrs[s] == pytest.approx(0.1 * (0.1 + 0.9 * s / 5), rel=1e-12)
    assert lrs[5:10] == pytest.approx([0.1] * 5)
    assert lrs[10:20] == pytest.approx([0.01] * 10)
    assert lrs[20:] == pytest.approx([0.001] * 5)
    floored = _lrs(ScheduleConfig(name="step", milestones=(1, 2), min_lr=0.005), 25, 10, 30)
    assert floored[10] == pytest.approx(0.01) and floored[20] == pytest.approx(0.005)


def test_poly_schedule_insightface():
    # power 2 over 20 steps (insightface PolyScheduler without warm-up)
    lrs = _lrs(ScheduleConfig(name="poly", power=2.0), 21, 10, 20)
    for s in (0, 5, 10, 15, 20):
        assert lrs[s] == pytest.approx(0.1 * (1 - s / 20) ** 2, rel=1e-12, abs=1e-15)
    assert lrs[5] == pytest.approx(0.05625)


def test_poly_schedule_warmup_and_min_lr():
    cfg = ScheduleConfig(name="poly", power=2.0, warmup_epochs=0.4, warmup_start_factor=0.0, min_lr=0.01)
    lrs = _lrs(cfg, 24, 10, 24)  # W = 4 steps, then 20 steps of decay
    assert lrs[0] == 0.0
    assert lrs[2] == pytest.approx(0.1 * 2 / 4)
    assert lrs[4] == pytest.approx(0.1)
    # s = 14: progress 0.5 -> 0.01 + 0.09 * 0.25
    assert lrs[14] == pytest.approx(0.01 + 0.09 * 0.25, rel=1e-12)


def test_cosine_schedule():
    lrs = _lrs(ScheduleConfig(name="cosine", min_lr=0.02), 21, 5, 20)
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[10] == pytest.approx(0.02 + 0.08 * 0.5)
    assert lrs[5] == pytest.approx(0.02 + 0.08 * 0.5 * (1 + math.cos(math.pi / 4)), rel=1e-12)
    assert lrs[20] == pytest.approx(0.02)


def test_constant_schedule_and_past_end():
    assert _lrs(ScheduleConfig(name="constant"), 5, 2, 3) == pytest.approx([0.1] * 5)
    # poly past total_steps stays at its end value (no negative base of a fractional power)
    assert _lrs(ScheduleConfig(name="poly", min_lr=0.001), 8, 2, 4)[4:] == pytest.approx([0.001] * 4)


def test_scheduler_resume_continues_the_schedule():
    cfg = ScheduleConfig(name="step", milestones=(1,), warmup_epochs=0.3)
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    sched = build_scheduler(opt, cfg, 10, 20)
    for _ in range(7):
        opt.step()
        sched.step()
    state_opt, state_sched = opt.state_dict(), sched.state_dict()
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched2 = build_scheduler(opt2, cfg, 10, 20)
    opt2.load_state_dict(state_opt)
    sched2.load_state_dict(state_sched)
    for _ in range(4):
        opt2.step()
        sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.01)  # step 11, after the milestone at 10


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.prelu = nn.PReLU(4)
        self.fc = nn.Linear(4, 2)
        self.features = nn.BatchNorm1d(2)
        self.features.weight.requires_grad_(False)  # iresnet's fixed scale
        self.ln = nn.LayerNorm(2)


def test_param_groups_no_decay():
    model = _Tiny()
    groups = param_groups(model, 5e-4, no_decay_norm_and_bias=True)
    by_name = {g["name"]: g for g in groups}
    decay_ids = {id(p) for p in by_name["decay"]["params"]}
    no_decay_ids = {id(p) for p in by_name["no_decay"]["params"]}
    assert decay_ids == {id(model.conv.weight), id(model.fc.weight)}
    assert no_decay_ids == {
        id(p)
        for p in (
            model.bn.weight,
            model.bn.bias,
            model.prelu.weight,
            model.fc.bias,
            model.features.bias,
            model.ln.weight,
            model.ln.bias,
        )
    }
    assert by_name["decay"]["weight_decay"] == 5e-4 and by_name["no_decay"]["weight_decay"] == 0.0
    # everything trainable decayed without the flag; the frozen BN1d weight never appears
    (only,) = param_groups(model, 1e-3, no_decay_norm_and_bias=False)
    assert only["name"] == "decay"
    assert {id(p) for p in only["params"]} == decay_ids | no_decay_ids


def test_param_groups_shared_parameter_once_and_several_modules():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    b.weight = a.weight
    groups = param_groups([a, b], 0.1)
    params = [p for g in groups for p in g["params"]]
    assert len(params) == 3 and len({id(p) for p in params}) == 3


def test_sgd_weight_decay_only_on_decay_group():
    model = _Tiny()
    optimizer = build_optimizer(param_groups(model, 0.5), OptimConfig(lr=0.1, momentum=0.0, weight_decay=0.5))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    # zero gradient: decayed weights shrink by lr * wd = 5 %, the rest stay put
    assert torch.allclose(model.conv.weight, before["conv.weight"] * (1 - 0.1 * 0.5))
    assert torch.allclose(model.fc.weight, before["fc.weight"] * 0.95)
    for name in ("bn.weight", "bn.bias", "prelu.weight", "fc.bias", "features.bias"):
        assert torch.equal(dict(model.named_parameters())[name], before[name]), name


def test_build_optimizer_kinds():
    params = [nn.Parameter(torch.zeros(2))]
    sgd = build_optimizer(params, {"name": "sgd", "lr": 0.2, "nesterov": True})
    assert isinstance(sgd, torch.optim.SGD)
    assert (
        sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.9 and sgd.defaults["weight_decay"] == 5e-4
    )
    adamw = build_optimizer(params, {"name": "adamw", "lr": 1e-3, "betas": [0.8, 0.99], "weight_decay": 0.05})
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.defaults["betas"] == (0.8, 0.99) and adamw.defaults["weight_decay"] == 0.05


@pytest.mark.parametrize(
    "factory, value, match",
    [
        (as_optim_config, {"name": "rmsprop"}, "unknown optimizer 'rmsprop'"),
        (as_optim_config, {"lr": 0.0}, "optim.lr"),
        (as_optim_config, {"learning_rate": 0.1}, "unknown keys \\['learning_rate'\\]"),
        (as_optim_config, {"name": "adamw", "nesterov": True}, "nesterov"),
        (as_schedule_config, {"name": "exp"}, "unknown schedule 'exp'"),
        (as_schedule_config, {"milestones": [18, 10]}, "strictly increasing"),
        (as_schedule_config, {"warmup_start_factor": 2.0}, "warmup_start_factor"),
    ],
)
def test_config_errors(factory, value, match):
    with pytest.raises(ValueError, match=match):
        factory(value)


def test_scheduler_argument_errors():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        build_scheduler(optimizer, None, 0, 10)
    with pytest.raises(ValueError, match="warmup_epochs=5"):
        build_scheduler(optimizer, {"warmup_epochs": 5}, 10, 20)
    with pytest.raises(ValueError, match="min_lr"):
        build_scheduler(optimizer, {"name": "cosine", "min_lr": 1.0}, 10, 20)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer([], None)
