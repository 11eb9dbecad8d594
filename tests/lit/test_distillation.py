"""DistillationModule: frozen teacher, checkpoints, feature checks, teacher logits/centres, objectives."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

import ekd.data
import ekd.distill
from ekd.lit import DistillConfig
from ekd.lit.distillation import DistillationModule
from ekd.lit.recognition import NonFiniteLossError
from ekd.models import FaceBackbone, Features, registry
from ekd.models.loading import load_backbone
from tests.lit.common import (
    EMB,
    HEAD_KW,
    HEAD_SECTION,
    NUM_CLASSES,
    SIZE,
    STUDENT,
    STUDENT_SECTION,
    TEACHER,
    TEACHER_KW,
    TEACHER_SECTION,
    CaptureObjectiveInputs,
    backbone_section,
    loader,
    plain_teacher_file,
    train_teacher_checkpoint,
    trainer,
)


@pytest.fixture(scope="module")
def teacher_files(tmp_path_factory) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("teachers")
    return {
        "ckpt": train_teacher_checkpoint(directory),
        "plain": plain_teacher_file(directory),
        "dir": directory,
    }


DISTILL_OPTIONS = {f.name for f in dataclasses.fields(DistillConfig)}


def distillation_module(
    teacher_checkpoint, objectives: dict | None = None, **kwargs: Any
) -> DistillationModule:
    """The test distillation module; keyword arguments named like a DistillConfig field go to ``distill``."""
    distill = {"objectives": {"mimic": {"weight": 1.0}} if objectives is None else objectives}
    distill.update({key: kwargs.pop(key) for key in list(kwargs) if key in DISTILL_OPTIONS})
    options: dict[str, Any] = {
        "student": STUDENT_SECTION,
        "num_classes": NUM_CLASSES,
        "teacher": {**TEACHER_SECTION, "checkpoint": str(teacher_checkpoint)},
        "distill": distill,
        "head": HEAD_SECTION,
        "optim": {"lr": 0.05},
        "schedule": {"name": "constant"},
    }
    options.update(kwargs)
    return DistillationModule(**options)


def _teacher_state(module: DistillationModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.teacher.state_dict().items()}


def test_teacher_is_frozen_in_eval_mode_and_outside_the_optimizer(teacher_files):
    module = distillation_module(teacher_files["ckpt"], {"mimic": {}, "rkd": {}})
    before = _teacher_state(module)
    student_before = module.student.conv1.weight.detach().clone()
    fit = trainer(max_steps=3)
    fit.fit(module, loader(batch_size=8))
    assert not module.teacher.training and module.student.training
    assert all(not p.requires_grad for p in module.teacher.parameters())
    for key, value in module.teacher.state_dict().items():  # weights and BN running statistics
        assert torch.equal(value, before[key]), key
    in_optimizer = {id(p) for g in fit.optimizers[0].param_groups for p in g["params"]}
    assert not in_optimizer & {id(p) for p in module.teacher.parameters()}
    assert not torch.equal(module.student.conv1.weight, student_before)
    module.train()  # Lightning's call: the teacher stays in eval mode
    assert not module.teacher.training
    # the teacher is the checkpoint's network (student.* keys of the teacher run)
    reference = load_backbone(TEACHER, teacher_files["ckpt"], **TEACHER_KW)
    for key, value in reference.state_dict().items():
        assert torch.equal(before[key], value), key
    assert module.hparams.teacher_sha256 and len(module.hparams.teacher_sha256) == 64


def test_checkpoint_without_teacher_and_reload(teacher_files, tmp_path):
    module = distillation_module(teacher_files["ckpt"], {"ekd": {"topk": 10}})
    fit = trainer(max_steps=2)
    fit.fit(module, loader(batch_size=8))
    path = tmp_path / "student.ckpt"
    fit.save_checkpoint(path)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert not [k for k in raw["state_dict"] if k.startswith("teacher.")]
    assert raw["ekd"]["teacher"]["sha256"] == module.hparams.teacher_sha256
    assert "objectives.ekd.student_thresholds" in raw["state_dict"]

    reloaded = DistillationModule.load_from_checkpoint(path, weights_only=True)  # strict loading
    for key, value in module.student.state_dict().items():
        assert torch.equal(reloaded.student.state_dict()[key], value), key
    assert torch.equal(
        reloaded.objectives["ekd"].student_thresholds, module.objectives["ekd"].student_thresholds
    )
    for key, value in module.teacher.state_dict().items():  # re-read from the teacher file
        assert torch.equal(reloaded.teacher.state_dict()[key], value), key
    assert not reloaded.teacher.training
    # resuming a fit from it works (optimizer + loops restored, teacher from its file)
    trainer(max_steps=3).fit(reloaded, loader(batch_size=8), ckpt_path=path)

    kept = distillation_module(teacher_files["ckpt"], save_teacher=True)
    fit = trainer(max_steps=1)
    fit.fit(kept, loader(batch_size=8))
    fit.save_checkpoint(tmp_path / "with_teacher.ckpt")
    raw = torch.load(tmp_path / "with_teacher.ckpt", map_location="cpu", weights_only=True)
    assert any(k.startswith("teacher.") for k in raw["state_dict"])


def test_changed_teacher_file_is_refused(teacher_files, tmp_path):
    teacher = tmp_path / "teacher.ckpt"
    shutil.copy(teacher_files["ckpt"], teacher)
    module = distillation_module(teacher)
    fit = trainer(max_steps=1)
    fit.fit(module, loader(batch_size=8))
    path = tmp_path / "student.ckpt"
    fit.save_checkpoint(path)
    shutil.copy(teacher_files["plain"], teacher)  # another network under the same name
    with pytest.raises(ValueError, match="the teacher file changed"):
        DistillationModule.load_from_checkpoint(path, weights_only=True)


def test_missing_teacher_checkpoint_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.ckpt"):
        distillation_module(tmp_path / "nowhere.ckpt")
    with pytest.raises(ValueError, match="never runs with a random teacher"):
        distillation_module("")


_FLAT = "test_lit_flat"


class _FlatBackbone(FaceBackbone):
    """A real (tiny) backbone without stage maps: embedding only."""

    stage_shapes: dict = {}

    def __init__(self, embedding_size: int = 512, input_size: tuple[int, int] = SIZE) -> None:
        super().__init__()
        self.embedding_size = embedding_size
        self.input_size = tuple(input_size)
        self.fc = torch.nn.Linear(3 * input_size[0] * input_size[1], embedding_size)
        self.stage_shapes = {}

    def forward_features(self, x: torch.Tensor) -> Features:
        self.check_input(x)
        return Features(embedding=self.fc(x.flatten(1)))


@pytest.fixture
def flat_backbone():
    """Register the stage-less backbone for one test only (registry-driven tests must not see it)."""
    with registry.BACKBONES.registered(
        _FLAT, lambda embedding_size=512, input_size=SIZE: _FlatBackbone(embedding_size, input_size)
    ):
        yield


def test_missing_feature_field_fails_at_construction(teacher_files, flat_backbone):
    flat = {"student": backbone_section(_FLAT, {})}
    with pytest.raises(ValueError, match=r"'sp' needs \['stages.stage3'\] from the student"):
        distillation_module(teacher_files["ckpt"], {"sp": {"stage": "stage3"}}, **flat)
    # objectives that build adapters from stage_shapes report the missing stage themselves
    with pytest.raises(ValueError, match=r"'fitnet': student_shapes has no entry 'stage3'"):
        distillation_module(teacher_files["ckpt"], {"fitnet": {"stage": "stage3"}}, **flat)
    with pytest.raises(ValueError, match=r"\['kd'\] need student logits, but the student has no head"):
        distillation_module(teacher_files["ckpt"], {"kd": {}}, head=None)
    with pytest.raises(ValueError, match="teacher_centres='head'"):
        distillation_module(teacher_files["plain"], {"kd": {}}, teacher_centres="head")
    with pytest.raises(ValueError, match="unknown distillation objective 'nope'"):
        distillation_module(teacher_files["ckpt"], {"nope": {}})


def test_kd_logits_follow_the_feature_contract(teacher_files):
    module = distillation_module(teacher_files["ckpt"], {"kd": {"weight": 1.0}}, teacher_logit_scale=32.0)
    assert module.centres_source == "head"
    capture = CaptureObjectiveInputs(module.objectives["kd"])
    images, labels = next(iter(loader(batch_size=8)))
    module.training_step((images, labels), 0)
    student, teacher, seen_labels = capture.calls[-1]
    assert torch.equal(seen_labels, labels)
    centres = torch.load(teacher_files["ckpt"], weights_only=True)["state_dict"][
        "recognition.classifier.weight"
    ]
    with torch.no_grad():
        f_t = module.teacher.forward_features(images).embedding
    expected_t = 32.0 * F.normalize(f_t.double(), dim=1) @ F.normalize(centres.double(), dim=1).t()
    assert torch.allclose(teacher.logits.double(), expected_t, atol=1e-4)
    expected_s = HEAD_KW["s"] * (
        F.normalize(student.embedding.detach().double(), dim=1)
        @ F.normalize(module.recognition.centres().double(), dim=1).t()
    )
    assert torch.allclose(student.logits.detach().double(), expected_s, atol=1e-4)
    assert student.logits.requires_grad and not teacher.logits.requires_grad
    # KD from the formula: T^2 KL(p_t || p_s), T = 4
    p_t = F.softmax(teacher.logits.double() / 4, dim=1)
    log_p_s = F.log_softmax(student.logits.detach().double() / 4, dim=1)
    kd = 16 * (p_t * (p_t.log() - log_p_s)).sum(1).mean()
    assert float(module.last_logged["loss_kd"]) == pytest.approx(float(kd), rel=1e-4)


class _Data(pl.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        self.fingerprint = "toy-v1"

    def train_dataloader(self):
        return loader(batch_size=8)


def test_prototypes_from_the_training_data_cached_and_student_head_frozen(teacher_files, tmp_path):
    cache = tmp_path / "protos.pt"
    module = distillation_module(
        teacher_files["plain"],
        {"kd": {}, "margin": {"weight": 0.5}},
        teacher_centres="auto",
        prototype_cache=str(cache),
        student_head_init="freeze_teacher_centres",
    )
    assert module.centres_source == "prototypes"
    fit = trainer(max_steps=2)
    fit.fit(module, datamodule=_Data())
    # independent prototypes: mean of the normalised teacher embeddings per class, normalised (float64)
    images, labels = loader(batch_size=16).dataset.tensors
    teacher = load_backbone(TEACHER, teacher_files["plain"], **TEACHER_KW).double()
    with torch.no_grad():
        unit = F.normalize(teacher(images.double()), dim=1)
    expected = torch.stack([F.normalize(unit[labels == c].mean(0), dim=0) for c in range(NUM_CLASSES)])
    assert torch.allclose(module.teacher_class_centres.double(), expected, atol=1e-5)
    assert cache.exists()
    # keyed by teacher file, class count and the datamodule's dataset fingerprint
    sha256 = hashlib.sha256(teacher_files["plain"].read_bytes()).hexdigest()
    saved = torch.load(cache, map_location="cpu", weights_only=True)
    assert saved["fingerprint"] == f"teacher={sha256};classes={NUM_CLASSES};data=toy-v1"
    assert torch.allclose(module.objectives["margin"].centres.double(), expected, atol=1e-5)
    head = module.recognition.head.weight
    assert not head.requires_grad and torch.allclose(head.double(), expected, atol=1e-5)  # frozen: unchanged
    assert id(head) not in {id(p) for g in fit.optimizers[0].param_groups for p in g["params"]}
    # a second run reads the cache (a different data fingerprint is refused)
    other = _Data()
    other.fingerprint = "toy-v2"
    again = distillation_module(teacher_files["plain"], {"kd": {}}, prototype_cache=str(cache))
    with pytest.raises(ValueError, match="prototypes cache"):
        trainer(max_steps=1).fit(again, datamodule=other)


class _DataWithoutFingerprint(pl.LightningDataModule):
    def train_dataloader(self):
        return loader(batch_size=8)


def test_prototype_cache_needs_a_dataset_fingerprint(teacher_files, tmp_path):
    cache = tmp_path / "protos.pt"
    module = distillation_module(
        teacher_files["plain"], {"kd": {}}, teacher_centres="prototypes", prototype_cache=str(cache)
    )
    with pytest.raises(ValueError, match=r"_DataWithoutFingerprint\) has no dataset fingerprint") as err:
        trainer(max_steps=1).fit(module, datamodule=_DataWithoutFingerprint())
    assert "protos.pt" in str(err.value) and not cache.exists()  # never a cache keyed by data=None
    # without prototype_cache nothing is shared: the prototypes are computed for this run only
    module = distillation_module(teacher_files["plain"], {"kd": {}}, teacher_centres="prototypes")
    trainer(max_steps=1).fit(module, datamodule=_DataWithoutFingerprint())
    assert module.teacher_class_centres.shape == (NUM_CLASSES, EMB)


def _write_records(root, labels, seed):
    from ekd.data import write_face_records
    from ekd.data.images import encode_png

    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in labels]
    write_face_records(root, [encode_png(image) for image in images], labels)
    return root


def test_prototype_cache_is_keyed_by_the_face_datamodule_fingerprint(tmp_path):
    from ekd.data import FaceDataModule, FaceRecordDataset
    from ekd.models import create_backbone

    labels = [0, 0, 1, 1, 2, 2, 3, 3]
    first = _write_records(tmp_path / "first", labels, seed=0)
    second = _write_records(tmp_path / "second", [0, 1, 1, 1, 2, 2, 3, 3], seed=1)
    torch.manual_seed(5)
    teacher_file = tmp_path / "teacher112.pth"
    torch.save(create_backbone(TEACHER, base_width=8, embedding_size=EMB).state_dict(), teacher_file)
    cache = tmp_path / "protos.pt"

    def fit(root):
        module = distillation_module(
            teacher_file,
            {"kd": {}},
            teacher={**backbone_section(TEACHER, {"base_width": 8}), "checkpoint": str(teacher_file)},
            student=backbone_section(STUDENT, {"base_width": 8}),
            teacher_centres="prototypes",
            prototype_cache=str(cache),
        )
        data = FaceDataModule(
            source="rec", root=str(root), batch_size=4, flip=False, num_workers=0, val_sets=[]
        )
        trainer(max_steps=1).fit(module, datamodule=data)
        return module, data

    module, data = fit(first)
    fingerprint = data.fingerprint()
    assert fingerprint == ekd.data.dataset_fingerprint(FaceRecordDataset(first))
    saved = torch.load(cache, map_location="cpu", weights_only=True)
    sha256 = hashlib.sha256(teacher_file.read_bytes()).hexdigest()
    assert saved["fingerprint"] == f"teacher={sha256};classes={NUM_CLASSES};data={fingerprint}"
    # the same images elsewhere: the cached prototypes are reused
    again, _ = fit(shutil.copytree(first, tmp_path / "copy"))
    assert torch.equal(again.teacher_class_centres, saved["prototypes"])
    # another training set with the same class count: refused, naming both keys
    other_fingerprint = FaceDataModule(source="rec", root=str(second), num_workers=0).fingerprint()
    assert other_fingerprint != fingerprint
    with pytest.raises(ValueError, match="prototypes cache") as err:
        fit(second)
    assert fingerprint in str(err.value) and other_fingerprint in str(err.value)


def test_fitnet_hint_only_phase(teacher_files):
    module = distillation_module(teacher_files["ckpt"], {"fitnet": {"weight": 2.0, "warmup_steps": 2}})
    seen: list[dict[str, float]] = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append({k: float(v) for k, v in pl_module.last_logged.items()})

    trainer(max_steps=3, callbacks=[Record()]).fit(module, loader(batch_size=8))
    for step in (0, 1):  # hint only: the total is the weighted hint term alone
        assert seen[step]["loss"] == pytest.approx(2.0 * seen[step]["loss_fitnet"], rel=1e-6)
    total = 2.0 * seen[2]["loss_fitnet"] + seen[2]["loss_recognition"]
    assert seen[2]["loss"] == pytest.approx(total, rel=1e-6)


def test_batch_layout_must_match_the_batch(teacher_files):
    module = distillation_module(
        teacher_files["ckpt"], {"ekd": {"topk": 5}}, batch_layout=[4, 2], recognition_rows=4
    )
    with pytest.raises(ValueError, match=r"batch_layout \[4, 2\] does not add up to the batch size 8"):
        module.training_step(next(iter(loader(batch_size=8))), 0)


def test_nonfinite_objective_term_is_named(teacher_files):
    module = distillation_module(teacher_files["ckpt"], {"sp": {"weight": 1.0}, "mimic": {}})
    original = module.objectives["sp"].forward
    module.objectives["sp"].forward = lambda s, t, y: original(s, t, y) * float("inf")
    with pytest.raises(NonFiniteLossError, match=r"global step 0 .*sp=inf"):
        trainer(max_steps=2).fit(module, loader(batch_size=8))


@pytest.mark.parametrize("name", ekd.distill.list_objectives())
def test_every_objective_trains_one_step(teacher_files, name):
    hparams: dict[str, Any] = {
        "ekd": {"topk": 10},
        "darkrank": {},
        "shrinkteanet": {"stages": ["stage4"]},
    }.get(name, {})
    student = {
        "student": backbone_section("mbf", {"width_mult": 0.25, "input_size": SIZE})
    }  # regressors needed
    module = distillation_module(teacher_files["ckpt"], {name: hparams}, **student)
    before = {k: v.detach().clone() for k, v in module.student.named_parameters()}
    fit = trainer(max_steps=1)
    fit.fit(module, loader(batch_size=8))
    value = fit.callback_metrics[f"train/loss_{name}_epoch"]
    assert math.isfinite(float(value))
    assert any(not torch.equal(before[k], p) for k, p in module.student.named_parameters())
    # the objective's own parameters (adapters) are optimised
    in_optimizer = {id(p) for g in fit.optimizers[0].param_groups for p in g["params"]}
    assert all(id(p) in in_optimizer for p in module.objectives[name].parameters() if p.requires_grad)


def test_the_lightning_modules_never_touch_the_datamodule():
    """The teacher cache and prototypes reach the module through callbacks and the batch, never by the
    module reading ``trainer.datamodule`` (no attribute access, no getattr by name)."""
    import ast
    from pathlib import Path

    import ekd.lit

    for path in sorted(Path(ekd.lit.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.name}:{getattr(node, 'lineno', '?')}"
            assert not (isinstance(node, ast.Attribute) and "datamodule" in node.attr), where
            assert not (isinstance(node, ast.Constant) and node.value == "datamodule"), where


class _GuardedData(_Data):
    """A datamodule that fails any attribute read made from code in ekd.lit (the Lightning modules)."""

    def __getattribute__(self, name: str) -> Any:
        import sys

        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.startswith("ekd.lit"):
            raise AssertionError(f"{caller} read datamodule.{name}")
        return super().__getattribute__(name)


def test_prototypes_reach_the_module_through_a_callback(teacher_files):
    from ekd.distill.callbacks import TeacherPrototypesCallback

    module = distillation_module(
        teacher_files["plain"], {"kd": {}}, teacher_centres="prototypes", student_head_init="teacher_centres"
    )
    (callback,) = module.configure_callbacks()
    assert isinstance(callback, TeacherPrototypesCallback) and callback.teacher_cache is None
    trainer(max_steps=1).fit(module, datamodule=_GuardedData())
    images, labels = loader(batch_size=16).dataset.tensors
    with torch.no_grad():
        unit = F.normalize(module.teacher(images).double(), dim=1)
    expected = torch.stack([F.normalize(unit[labels == c].mean(0), dim=0) for c in range(NUM_CLASSES)])
    assert torch.allclose(module.teacher_class_centres.double(), expected, atol=1e-5)
    # head centres need no callback
    assert distillation_module(teacher_files["ckpt"], {"kd": {}}).configure_callbacks() == []
    # without a Trainer (or with setup called by hand) the missing prototypes are named
    with pytest.raises(RuntimeError, match="TeacherPrototypesCallback"):
        distillation_module(teacher_files["plain"], {"kd": {}}, teacher_centres="prototypes").setup("fit")


def test_a_module_built_from_hydra_configs_resumes_from_its_checkpoint(teacher_files, tmp_path):
    """``ekd-train`` passes OmegaConf sections; the saved hparams must still be plain containers, or
    ``fit(ckpt_path=...)`` (which reads with ``weights_only=True``) cannot resume the run."""
    from omegaconf import OmegaConf

    module = distillation_module(
        teacher_files["ckpt"],
        {"kd": {"weight": 1.0}},
        student=OmegaConf.create(STUDENT_SECTION),
        head=OmegaConf.create(HEAD_SECTION),
        aux_losses=OmegaConf.create({}),
        optim=OmegaConf.create({"lr": 0.05}),
        schedule=OmegaConf.create({"name": "constant"}),
        nonfinite="stop",
    )
    expected = distillation_module(teacher_files["ckpt"], {"kd": {"weight": 1.0}}, aux_losses={})
    # the same normalized values in plain containers (a tuple in the test's section is a list in OmegaConf's)
    assert json.dumps(dict(module.hparams), sort_keys=True) == json.dumps(
        dict(expected.hparams), sort_keys=True
    )
    fit = trainer(max_steps=1)
    fit.fit(module, loader(batch_size=8))
    path = tmp_path / "student.ckpt"
    fit.save_checkpoint(path)
    saved = torch.load(path, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert (
        saved["student"] == json.loads(json.dumps(expected.hparams.student)) and saved["optim"]["lr"] == 0.05
    )
    resumed = trainer(max_steps=2)
    resumed.fit(
        distillation_module(teacher_files["ckpt"], {"kd": {"weight": 1.0}}),
        loader(batch_size=8),
        ckpt_path=path,
    )
    assert resumed.global_step == 2
