"""Training progress that reads well in a log file: plain lines instead of a redrawn bar.

A terminal gets Lightning's rich bar; a job whose stdout is a file (SLURM, nohup, a CI log) gets
:class:`LogProgress`, one flushed line every ``every_n_steps`` optimizer steps and one per epoch end:

    step 120/4000 | epoch 2/26 | loss 12.34 | 1234 img/s | ETA 1:23:45
    epoch 2/26 done | step 154/4000 | loss 12.87 | 1201 img/s | ETA 1:22:10
    finished | step 4000/4000 | epoch 26/26 | 1210 img/s | 1:25:02

- ``loss``: mean of the training-step losses since the previous step line (over the epoch for an
  epoch line; ``n/a`` when every step was skipped), with ``| skipped N`` for the steps the non-finite
  guard (or a ``training_step`` returning None) skipped.
- ``img/s``: images of the whole job (this rank's batch size x world size) per second since the
  previous step line (over the epoch, over the fit).
- ``ETA``: mean step time of this fit so far x the remaining steps of ``max_steps`` /
  ``estimated_stepping_batches`` (``?`` when the run has no known end).

:func:`progress_bar` picks the one that suits stdout; it is the ``_target_`` of the run's progress
callback. Both are ``ProgressBar`` callbacks, so Lightning adds no bar of its own, and
``Trainer(enable_progress_bar=False)`` refuses them (drop the callback to run without progress).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar
from pytorch_lightning.utilities.data import extract_batch_size
from pytorch_lightning.utilities.imports import _RICH_AVAILABLE

from ekd.data.batch import FaceBatch


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (hours unbounded: ``27:00:00`` rather than ``1 day, 3:00:00``)."""
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class _Window:
    """Images, time and losses since some point (the previous line, the epoch start, the fit start).

    The losses are host numbers: the steps' losses are summed on their device by :class:`LogProgress`
    and read back (one sync) only when a line is printed, then added to every open window.
    """

    def __init__(self, now: float) -> None:
        self.start = now
        self.images = 0
        self.loss_sum = 0.0
        self.losses = 0
        self.skipped = 0

    def add(self, images: int, has_loss: bool) -> None:
        self.images += images
        if has_loss:
            self.losses += 1
        else:
            self.skipped += 1

    def loss_text(self) -> str:
        if not self.losses:
            return "loss n/a"
        return f"loss {self.loss_sum / self.losses:.4g}"

    def rate_text(self, now: float) -> str:
        elapsed = now - self.start
        return f"{self.images / elapsed:.0f} img/s" if elapsed > 0 else "? img/s"


class LogProgress(ProgressBar):
    """Plain progress lines for logs (module docstring).

    every_n_steps: print a line after every n-th optimizer step (and at every epoch end).
    stream: where the lines go (default: ``sys.stdout`` at the time of printing); each is flushed.
    clock: seconds, monotonic (``time.perf_counter``; tests pass a fake one).
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        super().__init__()
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"LogProgress every_n_steps must be a positive int, got {every_n_steps!r}")
        self.every_n_steps = every_n_steps
        self.stream = stream
        self.clock = clock
        self._enabled = True
        self._total_steps: int | None = None
        self._total_epochs: int | None = None
        self._start_step = 0
        self._epoch_index = 0
        self._last_printed_step = -1
        self._module_skipped: int | None = None
        # losses since the last printed line, summed on their device (no sync per step)
        self._unread_loss: torch.Tensor | float = 0.0
        now = clock()
        self._fit = _Window(now)
        self._epoch = _Window(now)
        self._interval = _Window(now)

    # -- ProgressBar interface -----------------------------------------------------------------

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    @property
    def is_disabled(self) -> bool:
        return not self._enabled

    def disable(self) -> None:
        # Lightning disables the bar on every rank but zero, and around the tuner's trial fits
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``LightningModule.print`` goes through the bar: to the same stream, flushed."""
        kwargs.setdefault("file", self.stream if self.stream is not None else sys.stdout)
        kwargs.setdefault("flush", True)
        print(*args, **kwargs)

    # -- hooks ---------------------------------------------------------------------------------

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        now = self.clock()
        self._fit = _Window(now)
        self._epoch = _Window(now)
        self._interval = _Window(now)
        self._unread_loss = 0.0
        self._start_step = trainer.global_step  # a resumed fit: the ETA uses this fit's steps only
        self._last_printed_step = trainer.global_step
        self._module_skipped = _skipped_steps(pl_module)
        self._total_steps = _total_steps(trainer)
        self._total_epochs = _total_epochs(trainer, self._total_steps)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._epoch_index = trainer.current_epoch
        self._epoch = _Window(self.clock())

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        images = _batch_size(batch) * trainer.world_size
        loss = self._step_loss(trainer, pl_module, outputs)
        if loss is not None:
            self._unread_loss = self._unread_loss + loss  # one tiny op on the loss's device
        for window in (self._fit, self._epoch, self._interval):
            window.add(images, loss is not None)
        step = trainer.global_step
        # with gradient accumulation several batches end on the same step: one line per step
        if step % self.every_n_steps == 0 and step != self._last_printed_step:
            self._last_printed_step = step
            self._read_losses()
            now = self.clock()
            parts = [
                f"step {self._steps_text(step)}",
                f"epoch {self._epoch_text(trainer.current_epoch)}",
                *self._window_parts(self._interval, now),
                f"ETA {self._eta(step, now)}",
            ]
            self._write(parts)
            self._interval = _Window(now)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._read_losses()
        now = self.clock()
        step = trainer.global_step
        parts = [
            f"epoch {self._epoch_text(trainer.current_epoch)} done",
            f"step {self._steps_text(step)}",
            *self._window_parts(self._epoch, now),
            f"ETA {self._eta(step, now)}",
        ]
        self._write(parts)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        now = self.clock()
        parts = [
            "finished",
            f"step {self._steps_text(trainer.global_step)}",
            # the last epoch that ran (current_epoch has already moved on when it ended on a boundary)
            f"epoch {self._epoch_text(self._epoch_index)}",
            self._fit.rate_text(now),
            format_duration(now - self._fit.start),
        ]
        self._write(parts)

    # -- pieces ----------------------------------------------------------------------------------

    def _read_losses(self) -> None:
        """Add the losses summed on the device since the last line to the open windows (one sync).

        Every line reads them, so the unread steps lie inside the current interval and epoch."""
        if isinstance(self._unread_loss, torch.Tensor):
            value = float(self._unread_loss)
            self._epoch.loss_sum += value
            self._interval.loss_sum += value
        self._unread_loss = 0.0

    def _step_loss(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any
    ) -> torch.Tensor | None:
        """This batch's training loss, or None for a skipped step."""
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        skipped = _skipped_steps(pl_module)
        if skipped is not None and skipped != self._module_skipped:
            # ekd's non-finite guard counts its skips; under DDP a skipped step returns a zero loss
            self._module_skipped = skipped
            return None
        if not isinstance(loss, torch.Tensor):
            return None
        loss = loss.detach()
        # Lightning divides the loss by accumulate_grad_batches before handing it over
        accumulate = trainer.accumulate_grad_batches
        return loss.float() * accumulate if accumulate != 1 else loss.float()

    def _steps_text(self, step: int) -> str:
        return f"{step}/{self._total_steps}" if self._total_steps is not None else str(step)

    def _epoch_text(self, epoch: int) -> str:
        return f"{epoch + 1}/{self._total_epochs}" if self._total_epochs is not None else str(epoch + 1)

    def _window_parts(self, window: _Window, now: float) -> list[str]:
        parts = [window.loss_text(), window.rate_text(now)]
        if window.skipped:
            parts.append(f"skipped {window.skipped}")
        return parts

    def _eta(self, step: int, now: float) -> str:
        done = step - self._start_step
        if self._total_steps is None or done <= 0:
            return "?"
        mean_step = (now - self._fit.start) / done
        return format_duration(mean_step * max(self._total_steps - step, 0))

    def _write(self, parts: list[str]) -> None:
        if self._enabled:
            self.print(" | ".join(parts))


def _skipped_steps(pl_module: pl.LightningModule) -> int | None:
    value = getattr(pl_module, "skipped_steps", None)
    return value if isinstance(value, int) else None


def _batch_size(batch: Any) -> int:
    # the usual batches directly (Lightning's extract_batch_size walks the whole structure: ~30 us)
    if isinstance(batch, FaceBatch) and isinstance(batch.labels, torch.Tensor) and batch.labels.ndim:
        return int(batch.labels.shape[0])
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor) and batch[0].ndim:
        return int(batch[0].shape[0])
    try:
        return int(extract_batch_size(batch))
    except Exception:  # a batch without tensors: count no images rather than fail the fit
        return 0


def _total_steps(trainer: pl.Trainer) -> int | None:
    """Optimizer steps of the whole fit (``max_steps`` or what the epochs give), None when unbounded."""
    total = trainer.estimated_stepping_batches
    return int(total) if math.isfinite(total) else None


def _total_epochs(trainer: pl.Trainer, total_steps: int | None) -> int | None:
    """Epochs the fit will run: ``max_epochs``, or fewer when ``max_steps`` ends it earlier."""
    batches = trainer.num_training_batches
    per_epoch = math.ceil(batches / trainer.accumulate_grad_batches) if math.isfinite(batches) else None
    by_steps = math.ceil(total_steps / per_epoch) if total_steps is not None and per_epoch else None
    max_epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None
    candidates = [n for n in (by_steps, max_epochs) if n is not None]
    return min(candidates) if candidates else None


def _stdout_is_terminal() -> bool:
    isatty = getattr(sys.stdout, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except ValueError:  # a closed stream
        return False


def progress_bar(refresh_rate: int = 1, every_n_steps: int = 50) -> ProgressBar:
    """The run's progress callback: Lightning's rich bar (tqdm without ``rich``) at ``refresh_rate``
    when stdout is a terminal, else :class:`LogProgress` printing every ``every_n_steps`` steps."""
    if _stdout_is_terminal():
        if _RICH_AVAILABLE:
            return RichProgressBar(refresh_rate=refresh_rate)
        return TQDMProgressBar(refresh_rate=refresh_rate)
    return LogProgress(every_n_steps=every_n_steps)
