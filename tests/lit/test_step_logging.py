"""What the training modules hand the loggers, and when the deferred non-finite check ("stop") fires.

Step values go to the loggers every ``log_every_n_steps`` steps (the step's own value), epoch means at
every epoch end (batch-size weighted), all compared with values recorded at each step by hand; the
non-finite check reads its verdict back on those same steps, at epoch ends and before checkpoints.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.loggers import Logger
from torch.utils.data import DataLoader

from ekd.lit.recognition import NonFiniteLossError
from tests.lit.common import loader, recognition_module, synthetic_faces, trainer


class CaptureLogger(Logger):
    """Keeps every ``log_metrics`` call as (step, metrics)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "capture"

    @property
    def version(self) -> str:
        return "0"

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.append((int(step), dict(metrics)))


class RecordSteps(pl.Callback):
    """Every step's values (``last_logged``), batch size, lr and epoch, recorded at its end."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._lr = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        values = {name: float(value) for name, value in pl_module.last_logged.items()}
        self.steps.append(
            {"values": values, "rows": len(batch[1]), "lr": self._lr, "epoch": trainer.current_epoch}
        )


def _uneven_loader() -> DataLoader:
    """10 images in batches of 4, 4, 2: epoch means must weight the last batch by its 2 rows."""
    dataset = synthetic_faces(per_class=3)
    dataset = torch.utils.data.Subset(dataset, list(range(10)))
    return DataLoader(dataset, batch_size=4, shuffle=False)


def test_loggers_get_step_values_every_n_steps_and_weighted_epoch_means():
    module = recognition_module(
        aux_losses={"center": {"weight": 0.01}}, schedule={"name": "step", "milestones": [1], "gamma": 0.1}
    )
    capture, record = CaptureLogger(), RecordSteps()
    fit = trainer(max_epochs=2, logger=capture, log_every_n_steps=2, callbacks=[record])
    fit.fit(module, _uneven_loader())
    steps = record.steps
    assert len(steps) == 6  # 3 steps per epoch
    names = ["loss", "loss_recognition", "loss_center", "embedding_norm", "acc"]

    step_rows = [(step, row) for step, row in capture.rows if "train/loss_step" in row]
    # Lightning's rule: the loggers write the steps k with (k + 1) % log_every_n_steps == 0
    assert [step for step, _ in step_rows] == [1, 3, 5]
    for step, row in step_rows:
        # the keys Lightning's own on_step + on_epoch logging gave (dashboards keep working)
        assert set(row) == {f"train/{name}_step" for name in names} | {"train/lr", "epoch"}
        expected = steps[step]
        # the step's own value (not a mean), exactly as recorded at that step
        assert {name: row[f"train/{name}_step"] for name in names} == {
            n: expected["values"][n] for n in names
        }
        assert row["train/lr"] == pytest.approx(expected["lr"])
        assert row["epoch"] == expected["epoch"]
    # the lr as it changes (epoch milestone 1: x 0.1 from step 3 on)
    assert [row["train/lr"] for _, row in step_rows] == pytest.approx([0.05, 0.005, 0.005])

    epoch_rows = [row for _, row in capture.rows if "train/loss_epoch" in row]
    assert len(epoch_rows) == 2
    for epoch, row in enumerate(epoch_rows):
        mine = [s for s in steps if s["epoch"] == epoch]
        assert [s["rows"] for s in mine] == [4, 4, 2]
        for name in names:
            mean = sum(s["values"][name] * s["rows"] for s in mine) / sum(s["rows"] for s in mine)
            assert row[f"train/{name}_epoch"] == pytest.approx(mean, rel=1e-6), name
        assert "train/lr_epoch" not in row
    # the epoch means are also what callbacks see
    assert float(fit.callback_metrics["train/loss_epoch"]) == pytest.approx(
        epoch_rows[-1]["train/loss_epoch"]
    )


def test_a_terminal_progress_bar_still_shows_loss_acc_and_lr():
    module = recognition_module()
    fit = trainer(max_steps=2, log_every_n_steps=1, enable_progress_bar=True, callbacks=[TQDMProgressBar()])
    fit.fit(module, loader())
    assert {"train/loss_step", "train/acc_step", "train/lr"} <= set(fit.progress_bar_metrics)


class NanAt(pl.Callback):
    """A NaN pixel in the batch of global step ``step``; records the student weights' finiteness."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.finite_after: dict[int, bool] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            batch[0][0, 0, 0, 0] = math.nan

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.finite_after[trainer.global_step - 1] = all(
            bool(torch.isfinite(p).all()) for p in pl_module.student.parameters()
        )


@pytest.mark.parametrize(("every", "detected"), [(4, 3), (1, 1), (2, 1)])
def test_stop_fires_at_the_next_log_step_naming_the_bad_one(every, detected):
    """A NaN at step 1 is found on the next step the loggers write ((k + 1) % every == 0), before that
    step's update; the steps in between did update the weights (with NaN)."""
    module = recognition_module(nonfinite="stop")
    nan = NanAt(step=1)
    fit = trainer(max_steps=8, log_every_n_steps=every, callbacks=[nan])
    with pytest.raises(NonFiniteLossError) as error:
        fit.fit(module, loader(per_class=8, batch_size=4))
    message = str(error.value)
    assert "non-finite loss at global step 1 (epoch 0): recognition=nan" in message
    assert f"Training stopped at global step {detected}" in message
    assert fit.global_step == detected  # the detecting step made no update
    assert nan.finite_after[0] is True
    assert all(not nan.finite_after[k] for k in range(1, detected))  # updated with NaN meanwhile


def test_stop_fires_at_the_epoch_end_and_before_a_checkpoint(tmp_path):
    # no log step before the epoch end (log_every_n_steps=50): the epoch end finds it
    module = recognition_module(nonfinite="stop")
    with pytest.raises(NonFiniteLossError, match="global step 1 .*Training stopped at global step 4"):
        trainer(max_epochs=1, callbacks=[NanAt(step=1)]).fit(module, loader(per_class=4, batch_size=4))
    # a checkpoint due after the bad step is refused (nothing written), so the last file predates it
    module = recognition_module(nonfinite="stop")
    checkpoints = pl.callbacks.ModelCheckpoint(
        dirpath=tmp_path, filename="{step}", every_n_train_steps=1, save_top_k=-1
    )
    fit = trainer(max_steps=8, callbacks=[NanAt(step=1), checkpoints], enable_checkpointing=True)
    with pytest.raises(NonFiniteLossError, match="global step 1 .*Training stopped at global step 2"):
        fit.fit(module, loader(per_class=8, batch_size=4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step=1.ckpt"]


def test_stop_checks_without_a_trainer_every_50_steps():
    """training_step called by hand (no trainer): the verdict is read back after 50 unchecked steps,
    or on demand with check_nonfinite()."""
    module = recognition_module(nonfinite="stop")
    images, labels = next(iter(loader(batch_size=8)))
    bad = images.clone()
    bad[0, 0, 0, 0] = math.nan
    module.training_step((bad, labels), 0)
    for _ in range(48):
        module.training_step((images, labels), 0)
    with pytest.raises(NonFiniteLossError, match="recognition=nan"):
        module.training_step((images, labels), 0)  # the 50th unchecked step
    module.training_step((bad, labels), 0)
    with pytest.raises(NonFiniteLossError):
        module.check_nonfinite()
    module.check_nonfinite()  # nothing pending any more
