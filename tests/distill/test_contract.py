"""The objective contract as DistillationModule honours it: bind, replaces_recognition, buffers, weights.

A test-only objective (registered for each test and removed after) reads the class count and the
student head in ``bind``, keeps a C x D buffer of class means updated in ``forward`` and computes the
classification loss itself through the head (``replaces_recognition``, the AdaDistill pattern).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from ekd.distill import OBJECTIVES, Objective, ObjectiveContext, create
from ekd.lit.distillation import DistillationModule
from ekd.models.features import Features
from ekd.registry import UnknownOptionError
from tests.lit.common import (
    EMB,
    NUM_CLASSES,
    STUDENT_SECTION,
    TEACHER_SECTION,
    CaptureObjectiveInputs,
    loader,
    plain_teacher_file,
    trainer,
)

TOY = "test-contract-centre-ce"
PULL = 0.1  # weight of the pull towards the stored class means inside the toy loss


class CentreCE(Objective):
    """CE of the student head's logits + PULL * ||f - mean_y||^2, the means a buffer moved in forward."""

    name = TOY
    replaces_recognition = True
    default_weight = 0.5

    def __init__(self, momentum: float = 0.5) -> None:
        super().__init__()
        self.momentum = float(momentum)
        self.context: ObjectiveContext | None = None
        self.bind_calls = 0
        # sized in bind, once the class count and embedding size are known
        self.register_buffer("class_means", torch.zeros(0, 0))

    def bind(self, context: ObjectiveContext) -> None:
        self.context = context  # the dataclass, not context.head: the head must not become a submodule
        self.bind_calls += 1
        self.class_means = torch.zeros(context.num_classes, context.student_embedding_size)

    def forward(self, student: Features, teacher: Features, labels: torch.Tensor) -> torch.Tensor:
        assert self.context is not None and self.context.head is not None
        embedding = student.embedding
        _, logits = self.context.head(embedding, labels)
        pull = (embedding - self.class_means[labels]).pow(2).sum(dim=1).mean()
        if self.training:
            with torch.no_grad():
                for label in labels.unique():
                    mean = embedding[labels == label].detach().mean(dim=0)
                    self.class_means[label] = (
                        self.momentum * self.class_means[label] + (1 - self.momentum) * mean
                    )
        return F.cross_entropy(logits, labels) + PULL * pull


@pytest.fixture
def toy():
    with OBJECTIVES.registered(TOY, CentreCE):
        yield CentreCE


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> Path:
    return plain_teacher_file(tmp_path_factory.mktemp("teacher"))


def module(teacher_file: Path, objectives: dict, **kwargs: Any) -> DistillationModule:
    options: dict[str, Any] = {
        "student": STUDENT_SECTION,
        "num_classes": NUM_CLASSES,
        "teacher": {**TEACHER_SECTION, "checkpoint": str(teacher_file)},
        "distill": {"objectives": objectives},
        "head": {"name": "softmax"},  # logits W f + b: simple to recompute independently below
        "optim": {"lr": 0.05},
        "schedule": {"name": "constant"},
    }
    options.update(kwargs)
    return DistillationModule(**options)


def test_bind_receives_the_context_once(toy, teacher_file):
    distiller = module(teacher_file, {TOY: {}})
    objective = distiller.objectives[TOY]
    context = objective.context
    assert objective.bind_calls == 1
    assert context.num_classes == NUM_CLASSES
    assert context.student_embedding_size == EMB and context.teacher_embedding_size == EMB
    assert context.head is distiller.recognition
    assert context.student_shapes == {k: tuple(v) for k, v in distiller.student.stage_shapes.items()}
    assert context.teacher_shapes == {k: tuple(v) for k, v in distiller.teacher.stage_shapes.items()}
    assert objective.class_means.shape == (NUM_CLASSES, EMB)
    # the head is reached through the context, not registered a second time under the objective
    assert not [k for k in distiller.state_dict() if k.startswith(f"objectives.{TOY}.context")]
    assert sorted(k for k in distiller.state_dict() if k.startswith("objectives.")) == [
        f"objectives.{TOY}.class_means"
    ]


def test_replacing_objective_is_the_recognition_loss(toy, teacher_file):
    distiller = module(teacher_file, {TOY: {}})  # no weight given: default_weight 0.5
    assert distiller.objective_weights == {TOY: 0.5}
    capture = CaptureObjectiveInputs(distiller.objectives[TOY])
    heads: list[tuple[torch.Tensor, torch.Tensor]] = []
    logged: list[dict[str, torch.Tensor]] = []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            head = pl_module.recognition.head
            heads.append((head.weight.detach().clone(), head.bias.detach().clone()))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            logged.append(dict(pl_module.last_logged))

    trainer(max_steps=1, callbacks=[Record()]).fit(distiller, loader(batch_size=8))
    student, _, labels = capture.calls[0]
    embedding = student.embedding.detach()
    weight, bias = heads[0]
    # recomputed with plain torch ops: the buffer was zero before the first forward
    expected = F.cross_entropy(embedding @ weight.t() + bias, labels) + PULL * embedding.pow(2).sum(1).mean()
    assert "loss_recognition" not in logged[0]
    assert float(logged[0][f"loss_{TOY}"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(logged[0]["loss"]) == pytest.approx(0.5 * float(expected), rel=1e-5)
    assert "acc" in logged[0]  # the recognition accuracy is still logged
    # the loss went through the student head: its centres were trained
    assert not torch.equal(distiller.recognition.head.weight.detach(), weight)


def test_objective_buffer_round_trips_a_checkpoint(toy, teacher_file, tmp_path):
    distiller = module(teacher_file, {TOY: {"weight": 2.0}})
    fit = trainer(max_steps=2)
    fit.fit(distiller, loader(batch_size=8))
    means = distiller.objectives[TOY].class_means.detach().clone()
    assert means.abs().sum() > 0  # moved by the forward passes
    path = tmp_path / "student.ckpt"
    fit.save_checkpoint(path)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.equal(raw["state_dict"][f"objectives.{TOY}.class_means"], means)

    reloaded = DistillationModule.load_from_checkpoint(path, weights_only=True)  # strict loading
    assert torch.equal(reloaded.objectives[TOY].class_means, means)
    assert reloaded.objective_weights == {TOY: 2.0}
    assert reloaded.objectives[TOY].context.head is reloaded.recognition


def test_at_most_one_objective_replaces_recognition(toy, teacher_file):
    with pytest.raises(ValueError, match=r"\['a', 'b'\] each replace the recognition loss"):
        module(teacher_file, {"a": {"objective": TOY}, "b": {"objective": TOY}})
    with pytest.raises(ValueError, match="'a' replaces the recognition loss .* has no head"):
        module(teacher_file, {"a": {"objective": TOY}}, head=None)


def test_training_signal_with_a_replacing_objective(toy, teacher_file):
    assert module(teacher_file, {TOY: {}}).has_training_signal()
    # recognition_weight does not stand in for the replaced term: weight 0 leaves nothing to train
    assert not module(teacher_file, {TOY: {"weight": 0.0}}, recognition_weight=1.0).has_training_signal()


def test_default_weight_and_hint_only_defaults(teacher_file):
    assert Objective.default_weight == 1.0 and Objective.replaces_recognition is False
    assert Objective().hint_only(0) is False and create("mimic").hint_only(10**6) is False
    assert create("fitnet", warmup_steps=2).hint_only(1) and not create("fitnet", warmup_steps=2).hint_only(2)
    distiller = module(teacher_file, {"sp": {}, "mimic": {}, "second": {"objective": "mimic", "weight": 3.0}})
    assert distiller.objective_weights == {"sp": 3000.0, "mimic": 1.0, "second": 3.0}
    assert "recognition" in distiller.loss_terms(*next(iter(loader(batch_size=8))))[0]


def test_unknown_hyper_parameter_lists_the_accepted_ones():
    with pytest.raises(
        UnknownOptionError, match=r"'kd' has no hyper-parameter 'temp'; it accepts: temperature"
    ):
        create("kd", temp=3)
    with pytest.raises(ValueError, match="'mimic' has no hyper-parameter 'temp'; it accepts: eps"):
        create("mimic", temp=3)
