"""EKD under 2 gloo processes equals one process on the gathered batch (loss, thresholds, gradients),
and the threshold state is broadcast from rank 0 after load_state_dict."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ekd.distill import gather_global
from ekd.distill.ekd import EKDLoss
from ekd.models.features import Features

GENERAL, BALANCED, D_IN, D_OUT, WORLD, STEPS = 4, 6, 5, 3, 2, 2
HPARAMS = dict(topk=15, anchors=(3, 10, 50), temperature=0.05, momentum=0.3)


def _make_data() -> dict:
    gen = torch.Generator().manual_seed(0)
    student = nn.Linear(D_IN, D_OUT).double()
    with torch.no_grad():
        for p in student.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    steps = []
    for step in range(STEPS):
        per_rank = []
        for rank in range(WORLD):
            x = torch.randn(GENERAL + BALANCED, D_IN, generator=gen, dtype=torch.float64)
            teacher = torch.randn(GENERAL + BALANCED, 4, generator=gen, dtype=torch.float64)
            # general part: uniform labels from a large pool; balanced part: 2 identities x 3 images,
            # identity 11 + step appears on both ranks (positive pairs across ranks)
            general = torch.randint(0, 1000, (GENERAL,), generator=gen)
            ids = (10 + step + rank, 11 + step + rank) if rank == 0 else (11 + step, 13 + step)
            balanced = torch.tensor(ids).repeat_interleave(3)
            per_rank.append((x, teacher, torch.cat([general, balanced])))
        steps.append(per_rank)
    return {"student": student.state_dict(), "steps": steps}


def _run(objective: EKDLoss, student: nn.Linear, batches) -> list[dict]:
    """Per step: loss, thresholds and parameter gradients (labels, features as given)."""
    out = []
    for x, teacher, labels, layout in batches:
        student.zero_grad()
        s, t, y = gather_global(Features(student(x)), Features(teacher), labels, layout=layout)
        loss = objective(s, t, y)
        loss.backward()
        out.append(
            {
                "loss": loss.detach(),
                "tau_s": objective.student_thresholds.clone(),
                "tau_t": objective.teacher_thresholds.clone(),
                "weight": student.weight.grad.clone(),
                "bias": student.bias.grad.clone(),
                "num_pos": objective.log_items()["ekd/num_pos_pairs"].item(),
            }
        )
    return out


def _worker(rank: int, world_size: int, data: dict) -> dict:
    results = {}
    for scale in ("1", "world_size"):
        student = nn.Linear(D_IN, D_OUT).double()
        student.load_state_dict(data["student"])
        objective = EKDLoss(**HPARAMS, ddp_grad_scale=scale).double()
        batches = [(*step[rank], [GENERAL, BALANCED]) for step in data["steps"]]
        results[scale] = _run(objective, student, batches)

    # a rank-dependent state is replaced by rank 0's on load
    objective = EKDLoss(**HPARAMS).double()
    state = {
        "student_thresholds": torch.full((3,), 0.1 + rank, dtype=torch.float64),
        "teacher_thresholds": torch.full((3,), -0.2 - rank, dtype=torch.float64),
        "num_updates": torch.tensor(7 + rank),
    }
    objective.load_state_dict(state)
    results["loaded"] = {k: v.clone() for k, v in objective.state_dict().items()}
    return results


@pytest.mark.ddp
def test_two_processes_equal_one_process_on_gathered_batch():
    from tests.ddp_utils import run_gloo

    data = _make_data()
    ranks = run_gloo(_worker, data, world_size=WORLD)

    # single process on the global batch ordered [general of every rank, balanced of every rank]
    single = []
    for step in data["steps"]:
        parts = [[part[i] for part in step] for i in range(3)]
        x, teacher, labels = (
            torch.cat([p[:GENERAL] for p in parts[i]] + [p[GENERAL:] for p in parts[i]]) for i in range(3)
        )
        single.append((x, teacher, labels, None))
    student = nn.Linear(D_IN, D_OUT).double()
    student.load_state_dict(data["student"])
    reference = _run(EKDLoss(**HPARAMS).double(), student, single)
    assert all(r["num_pos"] > 6 for r in reference)  # cross-rank positives exist

    for scale, factor in (("1", 1.0), ("world_size", float(WORLD))):
        for step, ref in enumerate(reference):
            for rank in range(WORLD):
                got = ranks[rank][scale][step]
                # same value on every rank and as one process; gradient scale does not touch the value
                torch.testing.assert_close(got["loss"], ref["loss"], rtol=1e-12, atol=1e-15)
                torch.testing.assert_close(got["tau_s"], ref["tau_s"], rtol=1e-12, atol=1e-15)
                torch.testing.assert_close(got["tau_t"], ref["tau_t"], rtol=1e-12, atol=1e-15)
            assert ref["loss"].item() > 1e-6
            for name in ("weight", "bias"):
                # DDP averages parameter gradients over ranks
                mean = sum(ranks[rank][scale][step][name] for rank in range(WORLD)) / WORLD
                torch.testing.assert_close(mean, factor * ref[name], rtol=1e-10, atol=1e-14)
                assert ref[name].abs().sum() > 0

    for rank in range(WORLD):
        loaded = ranks[rank]["loaded"]
        assert loaded["student_thresholds"].tolist() == pytest.approx([0.1] * 3)
        assert loaded["teacher_thresholds"].tolist() == pytest.approx([-0.2] * 3)
        assert loaded["num_updates"].item() == 7 and loaded["num_updates"].dtype == torch.long
