"""Relational objectives under 2 gloo processes equal one process on the concatenated batch.

Each rank embeds its half of a fixed batch with a tiny linear "student", calls ``gather_global`` and
the objective (with the stage maps it requires, e.g. SP on a stage map), and back-propagates. The
loss on every rank must equal the single-process loss on the whole batch, and the mean over ranks of
the parameter gradients (what DDP applies) must equal the single-process gradient. All objectives run
in one spawned pair of processes.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ekd import dist
from ekd.distill import create, gather_global
from ekd.models.features import Features

BATCH = 8
LABELS = [0, 1, 2, 3, 0, 1, 2, 3, 4, 4][:BATCH]  # every identity has one image on each rank
CASES = {
    "rkd": ("rkd", {"angle_chunk": 3}),
    "rkd_anchors": ("rkd", {"angle_anchors": 5}),
    "darkrank_soft": ("darkrank", {}),
    "darkrank_hard": ("darkrank", {"variant": "hard"}),
    "darkrank_top_one": ("darkrank", {"soft_distribution": "top_one"}),
    "sp": ("sp", {}),
    "sp_stage": ("sp", {"stage": "stage3"}),
    "cckd": ("cckd", {}),
    "triplet_all": ("triplet", {}),
    "triplet_batch_hard": ("triplet", {"mining": "batch_hard"}),
}


class TinyStudent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 5).double()
        self.stage = nn.Linear(4, 8).double()

    def forward(self, x: torch.Tensor) -> Features:
        return Features(embedding=self.embed(x), stages={"stage3": self.stage(x).reshape(-1, 2, 2, 2)})


def problem():
    generator = torch.Generator().manual_seed(1234)
    x = torch.randn(BATCH, 4, dtype=torch.float64, generator=generator)
    teacher = Features(
        embedding=torch.randn(BATCH, 6, dtype=torch.float64, generator=generator),
        stages={"stage3": torch.randn(BATCH, 3, 1, 2, dtype=torch.float64, generator=generator)},
    )
    torch.manual_seed(99)
    return x, teacher, torch.tensor(LABELS), TinyStudent()


def rows(features: Features, part: slice) -> Features:
    return Features(
        embedding=features.embedding[part], stages={k: v[part] for k, v in features.stages.items()}
    )


def loss_and_grads(name: str, x, teacher: Features, labels, model: TinyStudent, seed: int):
    objective_name, hparams = CASES[name]
    objective = create(objective_name, **hparams)
    model.zero_grad()
    student = model(x)
    if objective.relational:
        student, teacher, labels = gather_global(student, teacher, labels, stages=objective.required_stages())
    torch.manual_seed(seed)  # RKD anchor sampling: ranks draw differently, rank 0's draw must win
    loss = objective(student, teacher, labels)
    loss.backward()
    return loss.detach(), [
        torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()
    ]


def _worker(rank: int, world_size: int) -> dict:
    x, teacher, labels, model = problem()
    half = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
    assert dist.is_distributed()
    return {
        name: loss_and_grads(name, x[half], rows(teacher, half), labels[half], model, 100 + rank)
        for name in CASES
    }


@pytest.mark.ddp
def test_relational_objectives_two_processes_match_one():
    from tests.ddp_utils import run_gloo

    results = run_gloo(_worker)
    for name in CASES:
        x, teacher, labels, model = problem()
        loss, grads = loss_and_grads(name, x, teacher, labels, model, 100)
        assert loss.item() > 0 and any(g.abs().sum() > 0 for g in grads), name
        for rank_result in results:
            assert rank_result[name][0].item() == pytest.approx(loss.item(), rel=1e-10), name
        for i, grad in enumerate(grads):
            mean = (results[0][name][1][i] + results[1][name][1][i]) / 2
            assert torch.allclose(mean, grad, rtol=1e-9, atol=1e-12), (name, i)
