"""2-process DDP (gloo, CPU) of the whole DistillationModule training step against one process.

Each rank holds G general + PK balanced rows (batch_layout [G, PK], cross-entropy on the G general
rows); one process gets the doubled batch in the part-major order of the gather, [general of rank 0,
general of rank 1, balanced of rank 0, balanced of rank 1], with layout [2G, 2PK]. The student's BN
layers run on their running statistics (eval mode) in both runs, so per-sample outputs do not depend
on how the batch is split (BN batch statistics would; SyncBatchNorm has no CPU path). Tolerances
(float32, different summation orders): logged values 1e-5 relative, each gradient tensor 1e-4 in
relative L2 norm.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ekd.lit.distillation import DistillationModule
from ekd.lit.recognition import NonFiniteLossError
from tests.ddp_utils import run_gloo
from tests.lit.common import (
    HEAD_SECTION,
    NUM_CLASSES,
    STUDENT_SECTION,
    TEACHER_SECTION,
    train_teacher_checkpoint,
)

G, PK = 3, 4
OBJECTIVES = {"kd": {"weight": 1.0}, "ekd": {"weight": 10.0, "topk": 6}, "rkd": {"weight": 1.0}}


def _module(teacher_path: str, rows: int, layout: list[int]) -> DistillationModule:
    torch.manual_seed(0)  # identical initial weights in every process
    module = DistillationModule(
        student=STUDENT_SECTION,
        num_classes=NUM_CLASSES,
        teacher={**TEACHER_SECTION, "checkpoint": teacher_path},
        distill={"objectives": OBJECTIVES},
        head=HEAD_SECTION,
        recognition_rows=rows,
        batch_layout=layout,
    )
    module.student.eval()
    return module


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(2 * (G + PK), 3, 16, 16, generator=generator).clamp(-1, 1)
    general = torch.randint(0, NUM_CLASSES, (2 * G,), generator=generator)
    balanced = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])  # P = 2 identities x K = 2 per rank
    return images, torch.cat([general, balanced])


def _rank_rows(rank: int) -> list[int]:
    return [rank * G + i for i in range(G)] + [2 * G + rank * PK + i for i in range(PK)]


class _Step(nn.Module):
    """What Lightning's DDP wrapper does: the wrapped forward is the module's training_step."""

    def __init__(self, module: DistillationModule) -> None:
        super().__init__()
        self.module = module

    def forward(self, batch):
        return self.module.training_step(batch, 0)


def _grads(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def _worker(rank: int, world_size: int, teacher_path: str) -> dict[str, Any]:
    module = _module(teacher_path, G, [G, PK])
    images, labels = _data()
    rows = _rank_rows(rank)
    ddp = DistributedDataParallel(_Step(module))
    loss = ddp((images[rows], labels[rows]))
    loss.backward()
    result: dict[str, Any] = {
        "logged": {k: v.clone() for k, v in module.last_logged.items()},
        "grads": _grads(module),
        "thresholds": module.objectives["ekd"].student_thresholds.clone(),
    }

    # non-finite on rank 1 only, nonfinite="skip": every rank skips, gradients are exactly 0, no update
    module.hparams.nonfinite = "skip"
    optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    optimizer.step()  # momentum buffers from the first step's gradients
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    poisoned = images[rows].clone()
    if rank == 1:
        poisoned[0] = float("nan")

    def closure():
        optimizer.zero_grad()
        out = ddp((poisoned, labels[rows]))
        out.backward()
        return out

    module.optimizer_step(0, 1, optimizer, closure)
    result["skipped"] = module.skipped_steps
    result["skip_grads_zero"] = all(
        bool((p.grad == 0).all()) for p in module.parameters() if p.grad is not None
    )
    result["unchanged"] = all(torch.equal(before[n], p) for n, p in module.named_parameters())

    # nonfinite="stop" reads its verdict back lazily (check_nonfinite, a collective): a NaN image on
    # rank 1 only stops every rank, each naming its own non-finite terms (rank 0: only the relational
    # ones, computed on the gathered global batch)
    module.hparams.nonfinite = "stop"
    module.check_nonfinite()  # the finite first step, still unchecked: no error on any rank
    with torch.no_grad():
        module.training_step((poisoned, labels[rows]), 2)
    try:
        module.check_nonfinite()
        result["stop_message"] = None
    except NonFiniteLossError as error:
        result["stop_message"] = str(error)
    return result


@pytest.mark.ddp
def test_two_process_ddp_matches_one_process_with_the_doubled_batch(tmp_path):
    teacher_path = str(train_teacher_checkpoint(tmp_path, steps=2))
    results = run_gloo(_worker, teacher_path)

    single = _module(teacher_path, 2 * G, [2 * G, 2 * PK])
    images, labels = _data()
    loss = single.training_step((images, labels), 0)
    loss.backward()
    expected, grads = single.last_logged, _grads(single)

    def close(a, b) -> bool:
        return bool(torch.allclose(torch.as_tensor(a), torch.as_tensor(b), rtol=1e-5, atol=1e-6))

    # per-sample terms: the mean over ranks is the doubled-batch value (equal local batch sizes)
    for key in ("loss_recognition", "loss_kd", "acc", "embedding_norm"):
        mean = sum(float(r["logged"][key]) for r in results) / 2
        assert close(mean, expected[key]), (key, mean, expected[key])
    # relational terms are computed on the gathered global batch: every rank has the one-process value
    for result in results:
        for key in ("loss_ekd", "loss_rkd", "ekd/tau_s@1e-1", "ekd/num_pos_pairs", "ekd/num_neg_pairs"):
            assert close(result["logged"][key], expected[key]), (key, result["logged"][key], expected[key])
        assert close(result["thresholds"], single.objectives["ekd"].student_thresholds)
        # after DDP's averaging every parameter has the one-process gradient
        assert result["grads"].keys() == grads.keys()
        for name, grad in grads.items():
            error = (result["grads"][name] - grad).norm() / grad.norm().clamp_min(1e-12)
            assert error < 1e-4, (name, float(error))
        assert result["skipped"] == 1 and result["skip_grads_zero"] and result["unchanged"]
    named = []
    for result in results:
        head, where = result["stop_message"].split(": ", 1)
        assert head == "non-finite loss at global step 0 (epoch 0)"
        named.append({term.split("=")[0] for term in where.split(". Training")[0].split(", ")})
    assert {"recognition", "kd", "rkd"} <= named[1]
    assert "rkd" in named[0] and named[0] <= {"ekd", "rkd"}
