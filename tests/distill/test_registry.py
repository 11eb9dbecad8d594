"""The objective registry: every baseline objective builds with its defaults and declares its contract."""

from __future__ import annotations

import pytest
import torch

import ekd.distill as distill
from ekd.distill import Objective, create, list_objectives
from ekd.models.features import STAGE_NAMES, Features

BASELINES = {
    # name: (relational, needs_teacher_centres, requires with defaults)
    "kd": (False, False, {"logits"}),
    "fitnet": (False, False, {"stages.stage4"}),
    "rkd": (True, False, {"embedding"}),
    "darkrank": (True, False, {"embedding"}),
    "sp": (True, False, {"embedding"}),
    "cckd": (True, False, {"embedding"}),
    "shrinkteanet": (False, False, {"embedding"}),
    "triplet": (True, False, {"embedding"}),
    "margin": (False, True, {"embedding"}),
    "mimic": (False, False, {"embedding"}),
}


def test_every_baseline_registers_on_import():
    assert set(BASELINES) <= set(list_objectives())
    assert list_objectives() == sorted(list_objectives())


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_create_with_defaults_and_contract(name):
    relational, needs_centres, requires = BASELINES[name]
    objective = create(name)
    assert isinstance(objective, Objective) and objective.name == name
    assert objective.relational is relational
    assert objective.needs_teacher_centres is needs_centres
    assert objective.requires == frozenset(requires)
    assert objective.default_weight > 0
    full = Features(
        embedding=torch.zeros(2, 4),
        stages={s: torch.zeros(2, 1, 1, 1) for s in STAGE_NAMES},
        logits=torch.zeros(2, 3),
    )
    assert all(full.has(r) for r in objective.requires)  # every declared field is a valid requirement
    if not needs_centres:
        with pytest.raises(TypeError, match="does not use teacher class centres"):
            objective.set_teacher_centres(torch.ones(3, 4))


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown distillation objective 'kdd'; known: .*darkrank.*triplet"):
        create("kdd")


def test_unknown_hyper_parameter_is_an_error():
    with pytest.raises(TypeError, match="temp"):
        create("kd", temp=3)


def test_fitnet_requires_follows_the_stage():
    assert create("fitnet", stage="stage2").requires == frozenset({"stages.stage2"})
    assert hasattr(distill, "create")
