"""RecognitionModule: training, logged values, optimisation setup, non-finite guard, checkpoints."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from ekd.lit.recognition import NonFiniteLossError, load_class_centres
from ekd.models.loading import load_backbone
from tests.lit.common import (
    EMB,
    HEAD_KW,
    NUM_CLASSES,
    STUDENT,
    STUDENT_KW,
    loader,
    plain_teacher_file,
    recognition_module,
    trainer,
)


class EpochLosses(pl.Callback):
    def __init__(self) -> None:
        self.epoch_losses: list[float] = []
        self.step_lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.step_lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    # the module logs its epoch means in its own on_train_epoch_end, which Lightning calls after the
    # plain callbacks' (only metric-monitoring ones, ModelCheckpoint and EarlyStopping, run after it):
    # read them when the next epoch starts and when training ends
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch > 0:
            self.epoch_losses.append(float(trainer.callback_metrics["train/loss_epoch"]))

    def on_train_end(self, trainer, pl_module) -> None:
        self.epoch_losses.append(float(trainer.callback_metrics["train/loss_epoch"]))


def test_fit_lowers_the_loss_and_logs():
    module = recognition_module(optim={"lr": 0.05}, aux_losses={"center": {"weight": 0.01}})
    losses = EpochLosses()
    fit = trainer(max_epochs=6, callbacks=[losses])
    fit.fit(module, loader(per_class=4, batch_size=8, shuffle=True))
    assert len(losses.epoch_losses) == 6
    assert losses.epoch_losses[-1] < 0.7 * losses.epoch_losses[0], losses.epoch_losses
    # the epoch means reach callback_metrics (step values go to the loggers: tests/lit/test_step_logging.py)
    logged = fit.callback_metrics
    for name in ("loss", "loss_recognition", "loss_center", "acc", "embedding_norm"):
        assert f"train/{name}_epoch" in logged, name
    assert all(math.isfinite(float(v)) for v in logged.values())


def _arcface_ce_float64(embedding, weight, labels, s, m):
    """ArcFace cross-entropy from the formula (s cos(theta_y + m) on the target, s cos theta elsewhere)."""
    cos = F.normalize(embedding.double(), dim=1) @ F.normalize(weight.double(), dim=1).t()
    cos_y = cos.gather(1, labels[:, None]).clamp(-1, 1)
    assert bool((cos_y > math.cos(math.pi - m)).all())  # the plain branch of the theta + m > pi rule
    target = torch.cos(torch.acos(cos_y) + m)
    logits = s * cos.scatter(1, labels[:, None], target)
    return F.cross_entropy(logits, labels)


def test_training_step_values_on_recognition_rows():
    module = recognition_module(
        recognition_rows=3, aux_losses={"triplet": {"weight": 0.5, "mining": "batch_hard"}}
    )
    images, labels = next(iter(loader(batch_size=8)))
    module.training_step((images, labels), 0)
    logged = module.last_logged
    embedding = module.student.forward_features(images).embedding.detach()  # train-mode BN: same batch stats
    weight = module.recognition.centres()
    expected = _arcface_ce_float64(embedding[:3], weight, labels[:3], HEAD_KW["s"], HEAD_KW["m"])
    assert float(logged["loss_recognition"]) == pytest.approx(float(expected), rel=1e-4)
    cos = F.normalize(embedding[:3].double(), dim=1) @ F.normalize(weight.double(), dim=1).t()
    assert float(logged["acc"]) == pytest.approx(float((cos.argmax(1) == labels[:3]).double().mean()))
    assert float(logged["embedding_norm"]) == pytest.approx(
        float(embedding.double().norm(dim=1).mean()), rel=1e-5
    )
    total = float(logged["loss_recognition"]) + 0.5 * float(logged["loss_triplet"])
    assert float(logged["loss"]) == pytest.approx(total, rel=1e-6)


def test_recognition_rows_larger_than_batch_is_an_error():
    module = recognition_module(recognition_rows=9)
    with pytest.raises(ValueError, match="recognition_rows=9 but the batch has only 8 rows"):
        module.training_step(next(iter(loader(batch_size=8))), 0)


def test_optimizer_groups_and_schedule_in_the_trainer():
    module = recognition_module(
        optim={"lr": 0.1, "weight_decay": 5e-4}, schedule={"name": "step", "milestones": [1, 2], "gamma": 0.1}
    )
    record = EpochLosses()
    fit = trainer(max_epochs=3, callbacks=[record])
    fit.fit(module, loader(per_class=4, batch_size=4))  # 16 images: 4 steps per epoch
    expected = [0.1] * 4 + [0.01] * 4 + [0.001] * 4
    assert record.step_lrs == pytest.approx(expected)
    optimizer = fit.optimizers[0]
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["decay"]["weight_decay"] == 5e-4 and groups["no_decay"]["weight_decay"] == 0.0
    no_decay = {id(p) for p in groups["no_decay"]["params"]}
    assert id(module.student.bn1.weight) in no_decay and id(module.student.prelu.weight) in no_decay
    assert id(module.student.conv1.weight) not in no_decay
    assert id(module.recognition.head.weight) in {id(p) for p in groups["decay"]["params"]}
    # the fixed BN1d scale of iresnet is not trained
    assert id(module.student.features.weight) not in {
        id(p) for g in optimizer.param_groups for p in g["params"]
    }


def test_bf16_mixed_channels_last_and_clipping_run():
    module = recognition_module(channels_last=True)
    fit = trainer(max_steps=2, precision="bf16-mixed", gradient_clip_val=1.0)
    fit.fit(module, loader())
    assert module.student.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert math.isfinite(float(fit.callback_metrics["train/loss_epoch"]))
    assert module.last_logged["loss_recognition"].dtype == torch.float32  # losses in fp32 under autocast


def _inject_nan(module, term: str, at_step: int):
    """Make the loss term ``term`` NaN at global step ``at_step``."""
    original = module.recognition_terms

    def patched(embedding, labels):
        terms, metrics = original(embedding, labels)
        if module.global_step == at_step:
            weight, value = terms[term]
            terms[term] = (weight, value * float("nan"))
        return terms, metrics

    module.recognition_terms = patched


def test_nonfinite_stop_names_step_and_term():
    module = recognition_module(aux_losses={"center": {"weight": 0.01}}, nonfinite="stop")
    _inject_nan(module, "center", at_step=2)
    with pytest.raises(NonFiniteLossError, match=r"global step 2 .*center=nan") as info:
        trainer(max_steps=4).fit(module, loader(batch_size=4))
    assert "recognition" not in str(info.value)


class ParamsAroundStep(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step
        self.before: dict[str, torch.Tensor] = {}
        self.after: dict[str, torch.Tensor] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            self.before = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.step:
            self.after = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def test_nonfinite_skip_skips_the_update_and_keeps_bn_statistics():
    module = recognition_module(nonfinite="skip", optim={"lr": 0.05, "momentum": 0.9})
    images, labels = next(iter(loader(per_class=4, batch_size=16)))
    poisoned = images.clone()
    poisoned[4:8] = float("nan")  # batch 1 (rows 4..7) poisons the forward and BN statistics
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(poisoned, labels), batch_size=4)
    around = ParamsAroundStep(step=1)
    fit = trainer(max_epochs=1, callbacks=[around])
    fit.fit(module, data)
    assert module.skipped_steps == 1
    assert fit.global_step == 4  # the batch was consumed
    assert float(fit.callback_metrics["train/skipped_steps"]) == 1.0
    for key, value in around.before.items():  # parameters, momentum-free: nothing moved in the skipped step
        assert torch.equal(value, around.after[key]), key
    assert all(bool(torch.isfinite(b).all()) for b in module.student.buffers())
    assert all(bool(torch.isfinite(p).all()) for p in module.parameters())


def test_invalid_arguments():
    with pytest.raises(ValueError, match="nonfinite"):
        recognition_module(nonfinite="ignore")
    with pytest.raises(ValueError, match="unknown auxiliary loss 'focal'"):
        recognition_module(aux_losses={"focal": {"weight": 1.0}})
    with pytest.raises(ValueError, match="weight must be a finite number"):
        recognition_module(aux_losses={"center": {"weight": -1.0}})
    with pytest.raises(ValueError, match="unknown keys"):
        recognition_module(optim={"learning_rate": 0.1})
    with pytest.raises(ValueError, match="nothing to train"):
        module = recognition_module(head=None)
        trainer(max_steps=1).fit(module, loader())


def test_checkpoint_centres_and_student_weights(tmp_path):
    module = recognition_module()
    fit = trainer(max_steps=2)
    fit.fit(module, loader())
    path = tmp_path / "recognition.ckpt"
    fit.save_checkpoint(path)
    raw = torch.load(path, map_location="cpu", weights_only=True)  # hparams are plain containers
    assert raw["ekd"]["class_centres_key"] == module.teacher_centres_key() == "recognition.classifier.weight"
    centres = load_class_centres(str(path))
    assert torch.equal(centres, module.recognition.centres())
    assert centres.shape == (NUM_CLASSES, EMB)
    backbone = load_backbone(STUDENT, path, embedding_size=EMB, **STUDENT_KW)
    for key, value in module.student.state_dict().items():
        assert torch.equal(backbone.state_dict()[key], value), key
    # an insightface-style file has no head
    assert load_class_centres(str(plain_teacher_file(tmp_path))) is None
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_class_centres(str(tmp_path / "missing.ckpt"))


def test_uint8_face_batches_are_normalised_on_the_device_as_the_float_ones():
    """A uint8 FaceBatch from a loader without the datamodule's transform trains on the same float values."""
    from ekd.data.batch import FaceBatch

    torch.manual_seed(0)
    pixels = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)  # the tests' small student input
    labels = torch.arange(8) % NUM_CLASSES
    flipped = torch.tensor([i % 3 == 0 for i in range(8)])
    # independently: mirror the flipped rows, then (x - 127.5) / 127.5 in float32
    mirrored = torch.stack([p.flip(-1) if f else p for p, f in zip(pixels, flipped)])
    floats = (mirrored.to(torch.float32) - 127.5) / 127.5
    losses = []
    for batch in ((floats, labels), FaceBatch(pixels, labels, torch.arange(8), flipped)):
        torch.manual_seed(1)  # the same initial weights for both batches
        module = recognition_module()
        module.training_step(batch, 0)
        losses.append(float(module.last_logged["loss_recognition"]))
    assert losses[0] == losses[1]
