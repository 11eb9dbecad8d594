"""Optimisers, weight-decay parameter groups and per-step learning-rate schedules.

Schedules are multiplicative factors of each group's base lr, evaluated at the optimizer step ``s``
(0-based; the lr used by the ``s``-th update) and stepped once per optimizer step:

    lr(s) = base * warm(s) * main(s),   warm(s) = f0 + (1 - f0) * s / W for s < W, else 1

with ``W = round(warmup_epochs * steps_per_epoch)`` (fractional epochs allowed), ``f0 =
warmup_start_factor`` and, for the remaining ``T - W`` steps (``T = total_steps``, progress
``p = clamp((s - W) / (T - W), 0, 1)``):

- ``step``:     main = max(gamma ** #{milestones m : round(m * steps_per_epoch) <= s}, min_lr / base)
                (milestones in epochs, absolute — the warm-up does not shift them; the ArcFace / EKD
                recipe: x0.1 at epochs 10, 18, 22)
- ``poly``:     lr = min_lr + (base - min_lr) * (1 - p) ** power   (insightface arcface_torch, power 2)
- ``cosine``:   lr = min_lr + (base - min_lr) * (1 + cos(pi p)) / 2
- ``constant``: main = 1

Weight decay (:func:`param_groups`): with ``no_decay_norm_and_bias`` the parameters of normalisation
layers (BatchNorm / InstanceNorm / LayerNorm / GroupNorm), every bias and PReLU slopes get no weight
decay. The EKD recipe decays everything but BN; insightface decays everything. PReLU slopes are
excluded too, following the PReLU paper (He et al. 2015, sec. 2.2: decay pushes the slopes to 0,
i.e. towards ReLU), and biases because decaying an offset regularises nothing useful. Class centres of
margin heads and adapters are ordinary weights and are decayed. Frozen parameters
(``requires_grad=False``, e.g. the fixed BN1d scale of iresnet or a frozen teacher head) are left out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ekd.choices import OptimName, ScheduleName, parse_choice
from ekd.lit.sections import as_section

# Layers whose affine parameters are scale/shift of a normalisation, not feature detectors.
_NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm*
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
)


@dataclass
class OptimConfig:
    """Optimizer hyper-parameters (defaults: the ArcFace / EKD SGD recipe)."""

    name: OptimName = OptimName.sgd
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    no_decay_norm_and_bias: bool = True

    def __post_init__(self) -> None:
        self.name = parse_choice(OptimName, self.name, "optim.name", "optimizer")
        if not self.lr > 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"optim.momentum must be in [0, 1), got {self.momentum}")
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError("optim.nesterov needs name='sgd' and momentum > 0")
        betas = tuple(float(b) for b in self.betas)
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")
        self.betas = betas  # type: ignore[assignment]  # lists from YAML become a tuple


@dataclass
class ScheduleConfig:
    """Learning-rate schedule (see the module docstring for the formulas)."""

    name: ScheduleName = ScheduleName.step
    milestones: tuple[float, ...] = (10, 18, 22)
    gamma: float = 0.1
    power: float = 2.0
    warmup_epochs: float = 0.0
    warmup_start_factor: float = 0.1
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        self.name = parse_choice(ScheduleName, self.name, "schedule.name", "schedule")
        milestones = tuple(float(m) for m in self.milestones)
        if any(m <= 0 for m in milestones) or list(milestones) != sorted(set(milestones)):
            raise ValueError(
                f"schedule.milestones must be strictly increasing positive epochs, got {self.milestones}"
            )
        self.milestones = milestones
        if not self.gamma > 0:
            raise ValueError(f"schedule.gamma must be > 0, got {self.gamma}")
        if not self.power > 0:
            raise ValueError(f"schedule.power must be > 0, got {self.power}")
        if self.warmup_epochs < 0:
            raise ValueError(f"schedule.warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if not 0 <= self.warmup_start_factor <= 1:
            raise ValueError(
                f"schedule.warmup_start_factor must be in [0, 1], got {self.warmup_start_factor}"
            )
        if self.min_lr < 0:
            raise ValueError(f"schedule.min_lr must be >= 0, got {self.min_lr}")


def as_optim_config(value: OptimConfig | Mapping[str, Any] | None) -> OptimConfig:
    """An :class:`OptimConfig` from a config, a mapping (unknown keys are an error) or None."""
    return as_section(OptimConfig, value, "optim")


def as_schedule_config(value: ScheduleConfig | Mapping[str, Any] | None) -> ScheduleConfig:
    """A :class:`ScheduleConfig` from a config, a mapping (unknown keys are an error) or None."""
    return as_section(ScheduleConfig, value, "schedule")


def _is_no_decay(module: nn.Module, param_name: str) -> bool:
    return isinstance(module, (*_NORM_LAYERS, nn.PReLU)) or param_name == "bias"


def param_groups(
    modules: nn.Module | Iterable[nn.Module], weight_decay: float, no_decay_norm_and_bias: bool = True
) -> list[dict[str, Any]]:
    """Trainable parameters of ``modules`` split into a decayed and a non-decayed group.

    Returns ``[{"name": "decay", "params": [...], "weight_decay": weight_decay}, {"name": "no_decay",
    "params": [...], "weight_decay": 0.0}]`` with empty groups left out; a parameter shared by several
    modules appears once. Without ``no_decay_norm_and_bias`` everything trainable is decayed.
    """
    if isinstance(modules, nn.Module):
        modules = [modules]
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for root in modules:
        for module in root.modules():
            for name, param in module.named_parameters(recurse=False):
                if not param.requires_grad or id(param) in seen:
                    continue
                seen.add(id(param))
                (no_decay if no_decay_norm_and_bias and _is_no_decay(module, name) else decay).append(param)
    groups = [
        {"name": "decay", "params": decay, "weight_decay": float(weight_decay)},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(
    params_groups: Iterable[dict[str, Any]] | Iterable[nn.Parameter],
    cfg: OptimConfig | Mapping[str, Any] | None,
) -> torch.optim.Optimizer:
    """SGD or AdamW over ``params_groups`` (a group's own ``weight_decay`` overrides ``cfg``'s)."""
    cfg = as_optim_config(cfg)
    params_groups = list(params_groups)
    if not params_groups:
        raise ValueError("build_optimizer: there are no trainable parameters")
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params_groups,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov,
        )
    return torch.optim.AdamW(params_groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def lr_factor(
    step: int, cfg: ScheduleConfig, steps_per_epoch: int, total_steps: int, base_lr: float
) -> float:
    """The multiplier of ``base_lr`` at optimizer step ``step`` (see the module docstring)."""
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    warm = 1.0
    if step < warmup_steps:
        warm = cfg.warmup_start_factor + (1.0 - cfg.warmup_start_factor) * step / warmup_steps
    floor = cfg.min_lr / base_lr
    if cfg.name == "constant":
        main = 1.0
    elif cfg.name == "step":
        passed = sum(1 for m in cfg.milestones if round(m * steps_per_epoch) <= step)
        main = max(cfg.gamma**passed, floor)
    else:
        span = max(total_steps - warmup_steps, 1)
        progress = min(max((step - warmup_steps) / span, 0.0), 1.0)
        if cfg.name == "poly":
            shape = (1.0 - progress) ** cfg.power
        else:
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        main = floor + (1.0 - floor) * shape
    return warm * main


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: ScheduleConfig | Mapping[str, Any] | None,
    steps_per_epoch: int,
    total_steps: int,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-optimizer-step :class:`~torch.optim.lr_scheduler.LambdaLR` implementing ``cfg``.

    ``steps_per_epoch``: optimizer steps per epoch (converts epoch milestones and warm-up to steps);
    ``total_steps``: optimizer steps of the whole run (the end of poly / cosine).
    """
    cfg = as_schedule_config(cfg)
    if steps_per_epoch < 1:
        raise ValueError(f"build_scheduler: steps_per_epoch must be >= 1, got {steps_per_epoch}")
    if total_steps < 1:
        raise ValueError(f"build_scheduler: total_steps must be >= 1, got {total_steps}")
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    if warmup_steps > total_steps:
        raise ValueError(
            f"schedule.warmup_epochs={cfg.warmup_epochs} is {warmup_steps} steps, more than the "
            f"{total_steps} steps of the run"
        )
    lambdas = []
    for group in optimizer.param_groups:
        base_lr = group.get("initial_lr", group["lr"])
        if cfg.min_lr > base_lr:
            raise ValueError(f"schedule.min_lr={cfg.min_lr} is above the base learning rate {base_lr}")

        def factor(step: int, base_lr: float = base_lr) -> float:
            return lr_factor(step, cfg, steps_per_epoch, total_steps, base_lr)

        lambdas.append(factor)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
