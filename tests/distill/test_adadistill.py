"""AdaDistill / ArcDistill / CosDistill against the official code (fdbtrs/AdaDistill), restated here.

``OfficialHeader`` restates ``utils/losses.py`` of the official repository (``AdaptiveAArcFace``,
``AdaptiveACosFace``, ``ACosFace``; ``ArcFace`` / ``CosFace`` with the teacher's header for
``train/train_AMLDistill.py``) with plain torch ops in float64: kernel D x C, ``l2_norm`` as a division
by the norm, the centre update as the in-place column assignment ``kernel[:, label] = ...``, the margin
through ``acos_`` / ``+= m`` / ``cos_`` on the whole matrix. The objective is compared with it over
several steps in loss value, gradient and the centres after each step, then checked inside the
training module (frozen head, checkpoints, resume) and under 2 gloo processes.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ekd import dist
from ekd.distill import ObjectiveContext, create
from ekd.distill.adadistill import last_occurrence
from ekd.heads import RecognitionLoss
from ekd.lit.distillation import DistillationModule
from ekd.models.features import Features
from ekd.registry import UnknownOptionError
from tests.lit.common import (
    NUM_CLASSES,
    STUDENT_SECTION,
    TEACHER_SECTION,
    CaptureObjectiveInputs,
    loader,
    plain_teacher_file,
    train_teacher_checkpoint,
    trainer,
)

D, C = 6, 5


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torch.nn.CosineSimilarity (eps 1e-8) of the rows, written out."""
    return (a * b).sum(1) / torch.clamp(a.norm(dim=1) * b.norm(dim=1), min=1e-8)


class OfficialHeader:
    """The official header's forward, restated (module docstring). ``kernel`` is D x C."""

    def __init__(self, kernel: torch.Tensor, margin: str, m: float, alpha: str, momentum: float = 1.0):
        self.kernel = kernel.clone()
        self.margin, self.m, self.alpha, self.momentum, self.s = margin, m, alpha, momentum, 64.0

    def __call__(self, f_s: torch.Tensor, f_t: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        # the training script passes F.normalize(features); the header normalises again (l2_norm)
        emb = unit(F.normalize(f_s))
        emb_t = unit(F.normalize(f_t))
        with torch.no_grad():
            if self.alpha == "fixed":  # ACosFace (momentum 1: the AMLDistill teacher header, never moved)
                a = torch.full((1, len(label)), self.momentum, dtype=emb.dtype)
            else:
                cos_tmp = cosine(emb, emb_t).clamp(-1, 1)
                if self.alpha == "weighted":
                    lam = cosine(self.kernel[:, label].T, emb_t).clamp(1e-6, 1).view(-1, 1)
                    target = cos_tmp.view(-1, 1) * lam
                else:  # the official else-branch with t_alpha = 0
                    target = cos_tmp.view(-1, 1)
                a = target.clamp(1e-6, 1.0).T
            self.kernel[:, label] = a * self.kernel[:, label] + (1.0 - a) * emb_t.T
        kernel_norm = self.kernel / self.kernel.norm(dim=0, keepdim=True)
        cos_theta = torch.mm(emb, kernel_norm).clamp(-1, 1)
        m_hot = torch.zeros(len(label), cos_theta.shape[1], dtype=cos_theta.dtype)
        m_hot.scatter_(1, label[:, None], self.m)
        if self.margin == "arc":
            logits = torch.cos(torch.acos(cos_theta) + m_hot) * self.s
        else:
            logits = (cos_theta - m_hot) * self.s
        return F.cross_entropy(logits, label)


def bound(objective, weight: torch.Tensor, teacher_size: int | None = None):
    """The objective bound to a float64 replicated ArcFace head holding ``weight`` (C x D)."""
    head = RecognitionLoss("arcface", weight.shape[1], weight.shape[0]).double()
    with torch.no_grad():
        head.head.weight.copy_(weight)
    context = ObjectiveContext(
        num_classes=weight.shape[0],
        student_embedding_size=weight.shape[1],
        teacher_embedding_size=teacher_size or weight.shape[1],
        head=head,
    )
    objective.bind(context)
    return objective, head


def steps(seed: int, count: int = 4, batch: int = 4, duplicates: bool = False):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(count):
        f_s = torch.randn(batch, D, dtype=torch.float64, generator=generator)
        # the teacher roughly agrees with the student, so alpha spans (0, 1) instead of sitting at 1e-6
        f_t = f_s + 0.8 * torch.randn(batch, D, dtype=torch.float64, generator=generator)
        if duplicates:
            labels = torch.randint(0, 3, (batch,), generator=generator)
        else:
            labels = torch.randperm(C, generator=generator)[:batch]
        yield f_s, f_t, labels


FORMS = {
    "adaarcdistill": ({"margin": "arc", "alpha": "weighted"}, ("arc", 0.45, "weighted", 1.0)),
    "adacosdistill": ({"margin": "cos", "alpha": "weighted"}, ("cos", 0.35, "weighted", 1.0)),
    "unweighted": ({"margin": "arc", "alpha": "unweighted"}, ("arc", 0.45, "unweighted", 1.0)),
    "acosface_momentum": ({"margin": "cos", "alpha": "fixed", "momentum": 0.9}, ("cos", 0.35, "fixed", 0.9)),
    "arcdistill": ({"margin": "arc", "alpha": "fixed", "momentum": 1.0}, ("arc", 0.45, "fixed", 1.0)),
}


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("duplicates", [False, True])
def test_equals_the_official_header_over_several_steps(form, duplicates):
    options, official_args = FORMS[form]
    weight = torch.randn(C, D, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    # the official kernel starts as the centres of the student head (teacher header for ArcDistill)
    official = OfficialHeader(weight.t(), *official_args)
    objective, head = bound(create("adadistill", **options).double(), weight)
    moved = False
    for f_s, f_t, labels in steps(3, duplicates=duplicates):
        ours_in = f_s.clone().requires_grad_(True)
        theirs_in = f_s.clone().requires_grad_(True)
        loss = objective(Features(embedding=ours_in), Features(embedding=f_t), labels)
        expected = official(theirs_in, f_t, labels)
        loss.backward()
        expected.backward()
        assert loss.item() == pytest.approx(expected.item(), rel=1e-10, abs=1e-12)
        torch.testing.assert_close(ours_in.grad, theirs_in.grad, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(head.head.weight.detach(), official.kernel.t(), rtol=1e-12, atol=1e-14)
        moved = moved or not torch.equal(head.head.weight.detach(), weight)
    assert moved == (official_args[3] < 1.0 or official_args[2] != "fixed")


def test_one_sample_by_hand():
    """One sample, two classes, D = 2: every quantity from its formula with math.*, AdaArcDistill."""
    a_s, a_t, a_w = 0.3, 0.5, 1.1  # angles of the student, teacher and class-0 centre embeddings
    s, m = 64.0, 0.45
    cos_st = math.cos(a_s - a_t)
    lam = max(1e-6, min(1.0, math.cos(a_w - a_t)))
    alpha = max(1e-6, min(1.0, cos_st * lam))
    w0 = [
        2.0 * alpha * math.cos(a_w) + (1 - alpha) * math.cos(a_t),  # centre 0 had norm 2
        2.0 * alpha * math.sin(a_w) + (1 - alpha) * math.sin(a_t),
    ]
    theta0 = math.acos((math.cos(a_s) * w0[0] + math.sin(a_s) * w0[1]) / math.hypot(*w0))
    cos1 = math.cos(a_s - 2.5)  # class 1's centre, at angle 2.5, is not moved
    z0, z1 = s * math.cos(theta0 + m), s * cos1
    expected = -z0 + math.log(math.exp(z0) + math.exp(z1))

    weight = torch.tensor(
        [[2 * math.cos(a_w), 2 * math.sin(a_w)], [math.cos(2.5), math.sin(2.5)]], dtype=torch.float64
    )
    objective, head = bound(create("adadistill").double(), weight)
    f_s = torch.tensor([[3 * math.cos(a_s), 3 * math.sin(a_s)]], dtype=torch.float64)
    f_t = torch.tensor([[0.5 * math.cos(a_t), 0.5 * math.sin(a_t)]], dtype=torch.float64)
    loss = objective(Features(embedding=f_s), Features(embedding=f_t), torch.tensor([0]))
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert head.head.weight[0].tolist() == pytest.approx(w0, rel=1e-12)
    assert objective.log_items()["alpha"].item() == pytest.approx(alpha, rel=1e-12)
    assert objective.log_items()["lambda"].item() == pytest.approx(lam, rel=1e-12)


def test_limiting_cases():
    weight = torch.randn(C, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    f_s, f_t, labels = next(steps(5))
    # momentum 0: each centre becomes the teacher embedding of its sample
    objective, head = bound(create("adadistill", alpha="fixed", momentum=0.0).double(), weight)
    objective(Features(embedding=f_s), Features(embedding=f_t), labels)
    torch.testing.assert_close(head.head.weight[labels].detach(), unit(f_t))
    # m = 0: ArcFace and CosFace are the same normalised softmax s cos theta
    losses = []
    for margin in ("arc", "cos"):
        objective, _ = bound(create("adadistill", margin=margin, m=0.0).double(), weight)
        losses.append(objective(Features(embedding=f_s), Features(embedding=f_t), labels).item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-12)
    # the loss depends on the directions only: scaling student or teacher changes nothing
    first, _ = bound(create("adadistill").double(), weight)
    second, _ = bound(create("adadistill").double(), weight)
    a = first(Features(embedding=f_s), Features(embedding=f_t), labels)
    b = second(Features(embedding=3 * f_s), Features(embedding=0.2 * f_t), labels)
    assert a.item() == pytest.approx(b.item(), rel=1e-12)


def test_eval_mode_does_not_move_the_centres():
    weight = torch.randn(C, D, dtype=torch.float64)
    objective, head = bound(create("adadistill").double(), weight)
    objective.eval()
    f_s, f_t, labels = next(steps(2))
    objective(Features(embedding=f_s), Features(embedding=f_t), labels)
    assert torch.equal(head.head.weight.detach(), weight)


def test_last_occurrence_of_each_class():
    labels = torch.tensor([3, 1, 3, 0, 1, 3])
    assert last_occurrence(labels, 5).tolist() == [3, 4, 5]  # classes 0, 1, 3


def test_bad_options_and_heads_are_named():
    with pytest.raises(ValueError, match=r"alpha must be one of \['weighted', 'unweighted', 'fixed'\]"):
        create("adadistill", alpha="adaptive")
    with pytest.raises(ValueError, match="margin must be one of"):
        create("adadistill", margin="sphere")
    with pytest.raises(ValueError, match="momentum must lie in"):
        create("adadistill", alpha="fixed", momentum=1.5)
    with pytest.raises(ValueError, match="below pi"):
        create("adadistill", m=4.0)
    with pytest.raises(UnknownOptionError, match="'adadistill' has no hyper-parameter 'lr'"):
        create("adadistill", lr=0.1)
    with pytest.raises(ValueError, match="sizes must match"):
        bound(create("adadistill"), torch.randn(C, D, dtype=torch.float64), teacher_size=D + 1)
    softmax = RecognitionLoss("softmax", D, C)
    context = ObjectiveContext(C, D, D, head=softmax)
    with pytest.raises(ValueError, match="normalised margin head .*'softmax'"):
        create("adadistill").bind(context)
    sharded = RecognitionLoss("arcface", D, C, sharded=True)
    with pytest.raises(ValueError, match="replicated head"):
        create("adadistill").bind(ObjectiveContext(C, D, D, head=sharded))
    with pytest.raises(ValueError, match="needs a recognition head"):
        create("adadistill").bind(ObjectiveContext(C, D, D, head=None))
    objective, _ = bound(create("adadistill").double(), torch.randn(C, D, dtype=torch.float64))
    f_s, f_t, _ = next(steps(1))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
        objective(Features(embedding=f_s), Features(embedding=f_t), torch.tensor([0, 1, 2, 7]))


# ------------------------------------------------------------------------------ in the training module
@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("teachers")
    return {"plain": plain_teacher_file(directory), "with_head": train_teacher_checkpoint(directory)}


def distiller(teacher: Path, **objective: object) -> DistillationModule:
    return DistillationModule(
        student=STUDENT_SECTION,
        num_classes=NUM_CLASSES,
        teacher={**TEACHER_SECTION, "checkpoint": str(teacher)},
        distill={"objectives": {"adadistill": dict(objective)}},
        head={"name": "arcface", "kwargs": {"s": 16.0, "m": 0.3}},
        optim={"lr": 0.05},
        schedule={"name": "constant"},
    )


def test_the_student_head_holds_the_distilled_centres(teachers):
    module = distiller(teachers["plain"])
    weight = module.recognition.head.weight
    assert not weight.requires_grad
    before = weight.detach().clone()
    capture = CaptureObjectiveInputs(module.objectives["adadistill"])
    fit = trainer(max_steps=1)
    fit.fit(module, loader(batch_size=8))
    optimised = {id(p) for group in fit.optimizers[0].param_groups for p in group["params"]}
    assert optimised and id(weight) not in optimised  # as the official header, outside the optimiser
    student, teacher, labels = capture.calls[0]
    official = OfficialHeader(before.double().t(), "arc", 0.45, "weighted")
    official(student.embedding.detach().double(), teacher.embedding.double(), labels)
    torch.testing.assert_close(weight.detach().double(), official.kernel.t(), rtol=1e-5, atol=1e-6)
    assert "loss_recognition" not in module.last_logged and "acc" in module.last_logged
    assert "adadistill/alpha" in module.last_logged


def test_arcdistill_starts_from_the_teacher_centres_and_a_resume_keeps_moved_ones(teachers, tmp_path):
    raw = torch.load(teachers["with_head"], map_location="cpu", weights_only=True)["state_dict"]
    teacher_centres = raw["recognition.classifier.weight"]
    module = distiller(teachers["with_head"], alpha="fixed", momentum=1.0, init="teacher")
    assert torch.equal(module.recognition.head.weight.detach(), teacher_centres)
    fit = trainer(max_steps=2)
    fit.fit(module, loader(batch_size=8))
    assert torch.equal(module.recognition.head.weight.detach(), teacher_centres)  # momentum 1: fixed

    # moving centres (momentum 0.5): a resumed run continues from the saved ones, not the teacher's
    module = distiller(teachers["with_head"], alpha="fixed", momentum=0.5, init="teacher")
    fit = trainer(max_steps=2)
    fit.fit(module, loader(batch_size=8))
    moved = module.recognition.head.weight.detach().clone()
    assert not torch.equal(moved, teacher_centres)
    path = tmp_path / "last.ckpt"
    fit.save_checkpoint(path)
    resumed = distiller(teachers["with_head"], alpha="fixed", momentum=0.5, init="teacher")
    trainer(max_steps=2).fit(resumed, loader(batch_size=8), ckpt_path=str(path))  # nothing left to do
    assert torch.equal(resumed.recognition.head.weight.detach(), moved)
    assert bool(resumed.objectives["adadistill"].initialised)


# ------------------------------------------------------------------------------------- 2 processes
def _ddp_worker(rank: int, world_size: int) -> dict:
    weight = torch.randn(C, D, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    objective, head = bound(create("adadistill").double(), weight)
    assert dist.is_distributed()
    out = []
    for f_s, f_t, labels in steps(11, count=3, batch=6, duplicates=True):
        half = slice(rank * 3, rank * 3 + 3)
        f_local = f_s[half].clone().requires_grad_(True)
        loss = objective(Features(embedding=f_local), Features(embedding=f_t[half]), labels[half])
        loss.backward()
        out.append((loss.detach(), f_local.grad, head.head.weight.detach().clone()))
    return {"steps": out}


@pytest.mark.ddp
def test_two_processes_update_with_the_global_batch():
    from tests.ddp_utils import run_gloo

    results = run_gloo(_ddp_worker)
    weight = torch.randn(C, D, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    objective, head = bound(create("adadistill").double(), weight)
    for i, (f_s, f_t, labels) in enumerate(steps(11, count=3, batch=6, duplicates=True)):
        objective.update_centres(f_s, f_t, labels)  # one process, the whole batch
        centres = head.head.weight.detach()
        for rank, result in enumerate(results):
            loss, grad, rank_centres = result["steps"][i]
            torch.testing.assert_close(rank_centres, centres, rtol=0, atol=0)  # identical on every rank
            half = slice(rank * 3, rank * 3 + 3)
            local = f_s[half].clone().requires_grad_(True)
            objective.eval()  # the loss of this rank's rows against the globally updated centres
            expected = objective(Features(embedding=local), Features(embedding=f_t[half]), labels[half])
            objective.train()
            expected.backward()
            assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
            torch.testing.assert_close(grad, local.grad, rtol=1e-10, atol=1e-13)
