"""LastCheckpoint in a real fit: last.ckpt at step boundaries (every N steps, epoch ends, the end), an
atomic write, and the requeue signal: the checkpoint first, then the handler that was there before
(submitit's requeue-and-exit on a cluster)."""

from __future__ import annotations

import os
import signal

import pytorch_lightning as pl
import torch

from ekd.lit.checkpoint import LastCheckpoint
from ekd.models import read_checkpoint
from tests.lit.common import loader, recognition_module, trainer


class SignalAt(pl.Callback):
    """Send ``signum`` to this process during training step ``step`` (before LastCheckpoint sees it)."""

    def __init__(self, signum: int, step: int) -> None:
        self.signum, self.step = signum, step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def _fit(tmp_path, *callbacks, max_steps=6, every=None, **options):
    torch.manual_seed(0)
    checkpoint = LastCheckpoint(tmp_path / "checkpoints", every_n_train_steps=every)
    fit = trainer(
        max_steps=max_steps, callbacks=[*callbacks, checkpoint], enable_checkpointing=True, **options
    )
    fit.fit(recognition_module(), loader(per_class=4, batch_size=4))  # 4 steps an epoch
    return fit, checkpoint


def test_last_checkpoint_follows_the_steps_and_epochs(tmp_path, monkeypatch):
    saved_steps = []
    original = LastCheckpoint.save

    def spy(self, trainer):
        path = original(self, trainer)
        saved_steps.append(read_checkpoint(path, trust_pickle=True)["global_step"])
        return path

    monkeypatch.setattr(LastCheckpoint, "save", spy)
    fit, checkpoint = _fit(tmp_path, max_steps=6, every=3)
    # every 3 steps (3, 6), the end of epoch 1 (step 4); step 6 is also the end of the fit: saved once
    assert saved_steps == [3, 4, 6]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["last.ckpt"]  # the temporary file renamed
    assert read_checkpoint(checkpoint.path, trust_pickle=True)["global_step"] == fit.global_step == 6
    assert checkpoint.interrupted is None


def test_the_epoch_checkpoint_follows_an_uneven_gradient_accumulation(tmp_path, monkeypatch):
    """4 batches an epoch, 3 accumulated: the epoch's last optimizer step (batch 4, one batch) is a
    step boundary too, and its checkpoint is taken there."""
    saved = []
    original = LastCheckpoint.save

    def spy(self, trainer):
        path = original(self, trainer)
        state = read_checkpoint(path, trust_pickle=True)
        saved.append(
            (
                state["global_step"],
                state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["ready"],
            )
        )
        return path

    monkeypatch.setattr(LastCheckpoint, "save", spy)
    fit, _ = _fit(tmp_path, max_steps=3, accumulate_grad_batches=3)
    # (optimizer steps, batches of the epoch read): after epoch 1 (steps 1-2, batches 1-4), then the end
    assert saved == [(2, 4), (3, 3)] and fit.global_step == 3


def test_requeue_signal_saves_first_then_calls_the_previous_handler(tmp_path):
    calls = []

    def requeue(signum, frame):  # what submitit installs: requeue the job, then exit
        calls.append(
            (
                signum,
                read_checkpoint(tmp_path / "checkpoints" / "last.ckpt", trust_pickle=True)["global_step"],
            )
        )

    previous = signal.signal(signal.SIGUSR2, requeue)
    try:
        fit, checkpoint = _fit(tmp_path, SignalAt(signal.SIGUSR2, step=2), max_steps=20)
    finally:
        restored = signal.getsignal(signal.SIGUSR2)
        signal.signal(signal.SIGUSR2, previous)
    assert restored is requeue  # LastCheckpoint put the previous handler back
    # the signal came during step 2 (0-based): that step completed, was saved, then the handler ran
    assert checkpoint.interrupted == signal.SIGUSR2 and fit.global_step == 3
    assert calls == [(int(signal.SIGUSR2), 3)]
