"""LogProgress through real (tiny) fits with a fake clock, and the progress_bar factory.

The clock advances 0.5 s per batch, so every number on the lines is known by hand: 8 images per
batch -> 16 img/s; ETA = 0.5 s x remaining steps; the loss is the mean of the losses the module
logged (recorded by a separate callback).
"""

from __future__ import annotations

import io
import math
import re
import sys

import pytest
import pytorch_lightning as pl
from pytorch_lightning.callbacks import ProgressBar, RichProgressBar

from ekd.lit.progress import LogProgress, format_duration, progress_bar
from tests.lit.common import loader, recognition_module, trainer

STEP_SECONDS = 0.5


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Tick(pl.Callback):
    """Every batch takes ``STEP_SECONDS`` on the fake clock."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.clock.now += STEP_SECONDS


class RecordLoss(pl.Callback):
    """The loss the module logged at each batch (None when the step was skipped)."""

    def __init__(self) -> None:
        self.losses: list[float | None] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        logged = pl_module.last_logged.pop("loss", None)  # popped: a skipped step logs nothing
        self.losses.append(None if logged is None else float(logged))


class NanBatch(pl.Callback):
    """A NaN pixel in the batch of global step ``step`` (the non-finite guard skips that step)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            batch[0][0, 0, 0, 0] = math.nan


def _mean(values) -> str:
    values = [v for v in values if v is not None]
    return f"{sum(values) / len(values):.4g}"


def _fit(max_steps: int, every_n_steps: int, module=None, extra=(), trainer_options=None):
    clock = FakeClock()
    stream = io.StringIO()
    bar = LogProgress(every_n_steps=every_n_steps, stream=stream, clock=clock)
    record = RecordLoss()
    fit = trainer(
        max_steps=max_steps,
        enable_progress_bar=True,
        callbacks=[Tick(clock), record, bar, *extra],
        **(trainer_options or {}),
    )
    pl.seed_everything(0, verbose=False)
    fit.fit(module or recognition_module(), loader(per_class=4, batch_size=8))  # 16 images: 2 steps / epoch
    return fit, bar, stream.getvalue().splitlines(), record.losses


def test_lines_every_n_steps_and_at_epoch_ends():
    fit, bar, lines, losses = _fit(max_steps=6, every_n_steps=2)
    # Lightning took our bar and added none of its own
    assert fit.progress_bar_callback is bar
    assert [c for c in fit.callbacks if isinstance(c, ProgressBar)] == [bar]
    assert len(losses) == 6 and all(v is not None for v in losses)
    # 6 steps of 2 batches per epoch: 3 epochs; each epoch ends on an even step, so a step line and an
    # epoch line follow each other; ETA 0.5 s x (6 - step)
    assert lines == [
        f"step 2/6 | epoch 1/3 | loss {_mean(losses[0:2])} | 16 img/s | ETA 0:00:02",
        f"epoch 1/3 done | step 2/6 | loss {_mean(losses[0:2])} | 16 img/s | ETA 0:00:02",
        f"step 4/6 | epoch 2/3 | loss {_mean(losses[2:4])} | 16 img/s | ETA 0:00:01",
        f"epoch 2/3 done | step 4/6 | loss {_mean(losses[2:4])} | 16 img/s | ETA 0:00:01",
        f"step 6/6 | epoch 3/3 | loss {_mean(losses[4:6])} | 16 img/s | ETA 0:00:00",
        f"epoch 3/3 done | step 6/6 | loss {_mean(losses[4:6])} | 16 img/s | ETA 0:00:00",
        "finished | step 6/6 | epoch 3/3 | 16 img/s | 0:00:03",
    ]


def test_interval_across_epochs_and_a_partial_last_epoch():
    # every 3 steps with 2 steps per epoch: the interval spans an epoch boundary; 5 steps end mid-epoch
    fit, bar, lines, losses = _fit(max_steps=5, every_n_steps=3)
    assert lines == [
        f"epoch 1/3 done | step 2/5 | loss {_mean(losses[0:2])} | 16 img/s | ETA 0:00:02",
        f"step 3/5 | epoch 2/3 | loss {_mean(losses[0:3])} | 16 img/s | ETA 0:00:01",
        f"epoch 2/3 done | step 4/5 | loss {_mean(losses[2:4])} | 16 img/s | ETA 0:00:00",
        f"epoch 3/3 done | step 5/5 | loss {_mean(losses[4:5])} | 16 img/s | ETA 0:00:00",
        "finished | step 5/5 | epoch 3/3 | 16 img/s | 0:00:02",
    ]
    # ETA 0:00:01 at step 3: 0.5 s x 2 steps; the format of every line
    pattern = re.compile(
        r"^(step \d+/\d+ \| epoch \d+/\d+|epoch \d+/\d+ done \| step \d+/\d+) \| loss \S+ \| "
    )
    assert all(pattern.match(line) for line in lines[:-1])


def test_skipped_steps_are_counted_and_left_out_of_the_loss():
    module = recognition_module(nonfinite="skip")
    fit, bar, lines, losses = _fit(max_steps=4, every_n_steps=4, module=module, extra=[NanBatch(step=1)])
    assert module.skipped_steps == 1 and losses[1] is None
    assert (
        lines[0]
        == f"epoch 1/2 done | step 2/4 | loss {_mean(losses[0:2])} | 16 img/s | skipped 1 | ETA 0:00:01"
    )
    # the step line's interval is the whole fit; epoch 2 (steps 3 and 4) skipped nothing
    assert lines[1:] == [
        f"step 4/4 | epoch 2/2 | loss {_mean(losses)} | 16 img/s | skipped 1 | ETA 0:00:00",
        f"epoch 2/2 done | step 4/4 | loss {_mean(losses[2:4])} | 16 img/s | ETA 0:00:00",
        "finished | step 4/4 | epoch 2/2 | 16 img/s | 0:00:02",
    ]


def test_gradient_accumulation_one_line_per_step_and_unscaled_losses():
    # 2 batches of 8 per optimizer step: 1 s and 16 images per step, one step per epoch
    fit, bar, lines, losses = _fit(
        max_steps=2, every_n_steps=1, trainer_options={"accumulate_grad_batches": 2}
    )
    assert len(losses) == 4
    # the printed loss is the module's (Lightning hands callbacks the loss divided by 2)
    assert lines == [
        f"step 1/2 | epoch 1/2 | loss {_mean(losses[0:2])} | 16 img/s | ETA 0:00:01",
        f"epoch 1/2 done | step 1/2 | loss {_mean(losses[0:2])} | 16 img/s | ETA 0:00:01",
        f"step 2/2 | epoch 2/2 | loss {_mean(losses[2:4])} | 16 img/s | ETA 0:00:00",
        f"epoch 2/2 done | step 2/2 | loss {_mean(losses[2:4])} | 16 img/s | ETA 0:00:00",
        "finished | step 2/2 | epoch 2/2 | 16 img/s | 0:00:02",
    ]


def test_a_disabled_bar_prints_nothing():
    clock, stream = FakeClock(), io.StringIO()
    bar = LogProgress(every_n_steps=1, stream=stream, clock=clock)
    bar.disable()  # what Lightning does on every rank but zero
    assert bar.is_disabled and not bar.is_enabled
    trainer(max_steps=2, enable_progress_bar=True, callbacks=[Tick(clock), bar]).fit(
        recognition_module(), loader()
    )
    assert stream.getvalue() == ""


def test_argument_checks_and_durations():
    with pytest.raises(ValueError, match="every_n_steps must be a positive int, got 0"):
        LogProgress(every_n_steps=0)
    assert format_duration(0) == "0:00:00"
    assert format_duration(5025.4) == "1:23:45"
    assert format_duration(27 * 3600) == "27:00:00"  # hours, not days


def test_factory_gives_log_lines_without_a_terminal(capsys):
    bar = progress_bar(every_n_steps=7)  # capsys: stdout is a capture buffer, not a TTY
    assert type(bar) is LogProgress and bar.every_n_steps == 7 and bar.stream is None
    bar.print("hello")
    assert capsys.readouterr().out == "hello\n"  # sys.stdout at the time of printing


def test_factory_gives_the_rich_bar_on_a_terminal(monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    bar = progress_bar(refresh_rate=3)
    assert isinstance(bar, RichProgressBar) and bar.refresh_rate == 3
