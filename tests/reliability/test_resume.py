"""Exact resume: a run killed mid-epoch, or just after an epoch ended, and resumed from its last
checkpoint ends exactly like an uninterrupted one (weights, optimizer momentum, EKD thresholds, sampler
position and flips, metrics)."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from ekd.data.datamodule import FaceDataModule
from ekd.lit.checkpoint import LAST, LastCheckpoint
from ekd.lit.distillation import DistillationModule
from ekd.lit.recognition import RecognitionModule
from tests.reliability.common import module_options, teacher_file, trainer, write_records

# 16 images of 4 identities; EKD batches of 4 general + 2 x 2 balanced rows -> 4 steps per epoch, so
# 6 steps cross an epoch boundary and a stop after step 3 is mid-epoch (after step 4: at the boundary).
LABELS = [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
TOTAL_STEPS = 6
STOP_AFTER = 3
STEPS_PER_EPOCH = 4


class Killed(RuntimeError):
    """Stands for the process dying (Lightning turns KeyboardInterrupt into sys.exit, so not that)."""


class Kill(pl.Callback):
    """Stops the process (an exception, like a crash) before step ``stop_after + 1`` starts; the
    checkpoint of step ``stop_after`` is already on disk."""

    def __init__(self, stop_after: int = STOP_AFTER) -> None:
        self.stop_after = stop_after

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.stop_after:
            raise Killed(f"simulated kill before step {self.stop_after + 1}")


class Record(pl.Callback):
    """Per-step losses, a fingerprint of each batch (labels, pixel sum: order and flips) and the logged
    epoch means of the loss (logged in the module's epoch-end hook: read when the next epoch starts and
    when training ends)."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.batches: list[tuple[list[int], float]] = []
        self.epoch_losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(pl_module.last_logged["loss"]))
        images, labels = batch.images, batch.labels
        self.batches.append((labels.tolist(), float(images.double().flip(-1).cumsum(-1).sum())))

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if "train/loss_epoch" in trainer.callback_metrics:
            self.epoch_losses.append(float(trainer.callback_metrics["train/loss_epoch"]))

    def on_train_end(self, trainer, pl_module) -> None:
        self.epoch_losses.append(float(trainer.callback_metrics["train/loss_epoch"]))


def _data(root: Path) -> FaceDataModule:
    return FaceDataModule(
        source="rec",
        root=str(root),
        sampler="ekd",
        general=4,
        identities=2,
        images_per_identity=2,
        flip=True,
        num_workers=0,
        val_sets=[],
        seed=7,
    )


def _run(
    make_module,
    root: Path,
    ckpt_dir: Path | None = None,
    kill: bool = False,
    resume: Path | None = None,
    stop_after: int = STOP_AFTER,
    last_checkpoint: bool = False,
):
    """A fit of ``TOTAL_STEPS`` steps (or killed after ``stop_after``); checkpoints in ``ckpt_dir``:
    Lightning's of every step, or with ``last_checkpoint`` ekd's ``last.ckpt`` at epoch ends only."""
    pl.seed_everything(0, verbose=False)
    module = make_module()
    record = Record()
    callbacks: list[pl.Callback] = [record]
    options = {}
    if ckpt_dir is not None and last_checkpoint:
        callbacks.append(LastCheckpoint(ckpt_dir, every_n_train_steps=None, save_on_signal=False))
        options["enable_checkpointing"] = True
    elif ckpt_dir is not None:
        callbacks.append(
            pl.callbacks.ModelCheckpoint(
                dirpath=ckpt_dir, filename="{step}", every_n_train_steps=1, save_top_k=-1
            )
        )
        options["enable_checkpointing"] = True
    if kill:
        callbacks.append(Kill(stop_after))
    # max_epochs too: a resume that miscounts the epochs stops early
    fit = trainer(max_steps=TOTAL_STEPS, max_epochs=2, callbacks=callbacks, **options)
    try:
        fit.fit(module, datamodule=_data(root), ckpt_path=None if resume is None else str(resume))
    except Killed:
        assert kill
    return module, record, fit


def _assert_same_end(straight, resumed, stop_after: int = STOP_AFTER, logged_before: tuple = ()) -> None:
    """``logged_before``: the epoch means the killed run logged (an epoch it finished before the kill)."""
    (module_a, record_a, fit_a), (module_b, record_b, fit_b) = straight, resumed
    assert fit_b.global_step == fit_a.global_step == TOTAL_STEPS
    state_a, state_b = module_a.state_dict(), module_b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        torch.testing.assert_close(state_b[key], state_a[key], rtol=0, atol=1e-6, msg=key)
    # optimizer momentum buffers
    opt_a, opt_b = fit_a.optimizers[0].state_dict(), fit_b.optimizers[0].state_dict()
    for index, values in opt_a["state"].items():
        torch.testing.assert_close(
            opt_b["state"][index]["momentum_buffer"], values["momentum_buffer"], rtol=0, atol=1e-6
        )
    # the steps after the resume saw the same batches and logged the same losses
    assert record_b.batches == record_a.batches[stop_after:]
    assert record_b.losses == pytest.approx(record_a.losses[stop_after:], rel=0, abs=1e-6)
    # and the same epoch means: the interrupted epoch's too (its sums so far are in the checkpoint)
    assert len(record_a.epoch_losses) == 2
    resumed_epochs = [*logged_before, *record_b.epoch_losses]
    assert resumed_epochs == pytest.approx(record_a.epoch_losses, rel=0, abs=1e-6)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    base = tmp_path_factory.mktemp("resume")
    return {"data": write_records(base / "data", LABELS), "teacher": teacher_file(base / "teacher.pth")}


def test_distillation_with_ekd_resumes_exactly(files, tmp_path):
    def make():
        return DistillationModule(
            **module_options(
                files["teacher"], objectives={"ekd": {"weight": 1.0}}, recognition_rows=4, batch_layout=[4, 4]
            )
        )

    straight = _run(make, files["data"])
    killed = _run(make, files["data"], ckpt_dir=tmp_path, kill=True)
    assert killed[2].global_step == STOP_AFTER and (tmp_path / f"step={STOP_AFTER}.ckpt").is_file()
    # the EKD thresholds moved (they matter) and are part of the checkpoint
    saved = torch.load(tmp_path / f"step={STOP_AFTER}.ckpt", weights_only=False)["state_dict"]
    assert saved["objectives.ekd.num_updates"] == STOP_AFTER
    assert bool((saved["objectives.ekd.student_thresholds"] != 0).any())

    torch.manual_seed(123)  # the resumed module starts from other weights: everything must come from the file
    resumed = _run(make, files["data"], resume=tmp_path / f"step={STOP_AFTER}.ckpt")
    _assert_same_end(straight, resumed)
    assert straight[0].objectives["ekd"].num_updates == TOTAL_STEPS


def test_recognition_resumes_exactly(files, tmp_path):
    def make():
        return RecognitionModule(**module_options(recognition_rows=4))

    straight = _run(make, files["data"])
    _run(make, files["data"], ckpt_dir=tmp_path, kill=True)
    resumed = _run(make, files["data"], resume=tmp_path / f"step={STOP_AFTER}.ckpt")
    _assert_same_end(straight, resumed)


def test_random_draws_resume_exactly(files, tmp_path):
    """Dropout before the embedding layer draws from the global generator at every step: only a
    checkpoint that carries the generator states resumes it exactly."""

    def make():
        options = module_options(recognition_rows=4)
        options["student"]["kwargs"] = {**options["student"]["kwargs"], "dropout": 0.5}
        return RecognitionModule(**options)

    straight = _run(make, files["data"])
    _run(make, files["data"], ckpt_dir=tmp_path, kill=True)
    saved = torch.load(tmp_path / f"step={STOP_AFTER}.ckpt", weights_only=False)
    assert len(saved["ekd_rng_states"]) == 1
    resumed = _run(make, files["data"], resume=tmp_path / f"step={STOP_AFTER}.ckpt")
    _assert_same_end(straight, resumed)


def test_the_epoch_end_last_checkpoint_resumes_exactly(files, tmp_path):
    """ekd's ``last.ckpt`` at an epoch end (the default, without every_n_train_steps): a checkpoint
    taken in on_train_epoch_end resumed a step short (Lightning ran one batch and ended the run)."""

    def make():
        return RecognitionModule(**module_options(recognition_rows=4))

    straight = _run(make, files["data"])
    killed = _run(
        make,
        files["data"],
        ckpt_dir=tmp_path,
        kill=True,
        stop_after=STEPS_PER_EPOCH + 1,
        last_checkpoint=True,
    )
    assert killed[2].global_step == STEPS_PER_EPOCH + 1
    saved = torch.load(tmp_path / LAST, weights_only=True)
    assert saved["global_step"] == STEPS_PER_EPOCH  # the epoch's checkpoint; the kill came a step later
    resumed = _run(make, files["data"], resume=tmp_path / LAST, stop_after=STEPS_PER_EPOCH)
    # the first epoch's mean was logged by the killed run, after its checkpoint
    _assert_same_end(
        straight, resumed, stop_after=STEPS_PER_EPOCH, logged_before=tuple(killed[1].epoch_losses)
    )
