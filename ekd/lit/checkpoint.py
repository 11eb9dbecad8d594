"""``LastCheckpoint``: a durable ``last.ckpt`` and a clean stop on SIGINT, SIGTERM and a requeue signal.

Days-long runs on preemptible clusters must lose at most a few minutes of work and never a
checkpoint:

- ``checkpoints/last.ckpt`` is written at the end of every epoch and every ``every_n_train_steps``
  optimizer steps, always at a step boundary (``on_train_batch_end``, where Lightning's own
  checkpoints resume exactly; the epoch's one after its last step, since one written in
  ``on_train_epoch_end`` resumes a step short), and atomically: the checkpoint goes to a temporary
  file in the same folder, is flushed to disk, then renamed over ``last.ckpt`` (a crash leaves the
  previous one).
- Signals stop the run at the next step boundary with a checkpoint of that step: SIGINT (Ctrl-C; a
  second Ctrl-C interrupts at once), SIGTERM (``kill``, SLURM preemption) and ``requeue_signal``
  (SIGUSR2 by default: what the SLURM launcher config asks SLURM to send ``signal_delay_s`` before
  the time limit). Under DDP the ranks agree on the stop (any rank's signal stops all, one tiny
  all-reduce per step). Handlers that were installed before (Lightning's SIGTERM bookkeeping,
  submitit's requeue handler) are called too: SIGTERM's at once, the requeue signal's only after
  the checkpoint is on disk (submitit's requeues the job and exits the process).

After the fit, :attr:`interrupted` names the signal that stopped it (None for a run that ended by
itself); ``ekd-train`` then writes no ``results.json`` and exits, and ``resume=auto`` continues from
the checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Checkpoint

log = logging.getLogger(__name__)

LAST = "last.ckpt"


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file or a folder) to disk; folders where the platform cannot are skipped."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class LastCheckpoint(Checkpoint):
    """Atomic ``dirpath/last.ckpt`` at epoch ends and every ``every_n_train_steps`` steps; a clean stop
    on signals (see the module docstring).

    Args:
        dirpath: the run's checkpoint folder.
        every_n_train_steps: also save every that many optimizer steps (None: epoch ends only).
        save_on_signal: stop at the next step boundary with a checkpoint on SIGINT / SIGTERM /
            ``requeue_signal`` (False: leave the signals alone).
        requeue_signal: the name of the signal a scheduler sends before a time limit (``"SIGUSR2"``),
            or None.
    """

    def __init__(
        self,
        dirpath: str | os.PathLike,
        every_n_train_steps: int | None = None,
        save_on_signal: bool = True,
        requeue_signal: str | None = "SIGUSR2",
    ) -> None:
        if every_n_train_steps is not None and (
            isinstance(every_n_train_steps, bool) or not isinstance(every_n_train_steps, int)
        ):
            raise ValueError(
                f"every_n_train_steps must be a positive int or None, got {every_n_train_steps!r}"
            )
        if every_n_train_steps is not None and every_n_train_steps < 1:
            raise ValueError(f"every_n_train_steps must be a positive int or None, got {every_n_train_steps}")
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = every_n_train_steps
        self.save_on_signal = save_on_signal
        self.requeue_signal: signal.Signals | None = None
        if requeue_signal is not None:
            try:
                self.requeue_signal = signal.Signals[requeue_signal]
            except KeyError:
                raise ValueError(
                    f"requeue_signal: unknown signal {requeue_signal!r} (e.g. SIGUSR1, SIGUSR2)"
                ) from None
        #: the signal that stopped the fit (None while running or after a fit that ended by itself)
        self.interrupted: signal.Signals | None = None
        self._received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}
        self._deferred: list[tuple[Any, signal.Signals]] = []
        self._last_saved_step = -1

    @property
    def path(self) -> Path:
        """Where ``last.ckpt`` is written."""
        return self.dirpath / LAST

    # --------------------------------------------------------------------------------------- saving
    def save(self, trainer: pl.Trainer) -> Path:
        """Write ``last.ckpt`` of the trainer's current state atomically (every rank must call this)."""
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
        tmp = self.dirpath / f".{LAST}.tmp"
        trainer.save_checkpoint(tmp, weights_only=False)  # the full state; rank zero writes, then a barrier
        if trainer.is_global_zero:
            _fsync(tmp)
            os.replace(tmp, self.path)
            _fsync(self.dirpath)
        trainer.strategy.barrier("LastCheckpoint.save")
        self._last_saved_step = trainer.global_step
        return self.path

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # the epoch's checkpoint is taken here, after its last step: a checkpoint written in
        # on_train_epoch_end resumes one step short (Lightning restarts that epoch with one batch more)
        epoch_loop = trainer.fit_loop.epoch_loop
        epoch_end = epoch_loop.batch_progress.is_last_batch or batch_idx + 1 >= trainer.num_training_batches
        if (batch_idx + 1) % trainer.accumulate_grad_batches and not epoch_end:
            return  # inside a gradient accumulation: not a step boundary (the gradients are not saved)
        stop = self.save_on_signal and self._signal_everywhere(trainer)
        due = epoch_end or (
            self.every_n_train_steps is not None
            and trainer.global_step > 0
            and trainer.global_step % self.every_n_train_steps == 0
        )
        if (stop or due) and trainer.global_step != self._last_saved_step:
            self.save(trainer)
        if stop:
            self.interrupted = self._received or signal.SIGTERM  # another rank's signal: the usual one
            log.warning(
                "%s received: checkpoint of step %d saved to %s; stopping",
                self.interrupted.name,
                trainer.global_step,
                self.path,
            )
            trainer.should_stop = True
            self._run_deferred()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # max_steps reached inside an epoch: the final state is the last checkpoint too
        if trainer.global_step != self._last_saved_step and self.interrupted is None:
            self.save(trainer)

    def _signal_everywhere(self, trainer: pl.Trainer) -> bool:
        local = self._received is not None
        if trainer.world_size > 1:
            return bool(trainer.strategy.reduce_boolean_decision(local, all=False))
        return local

    # -------------------------------------------------------------------------------------- signals
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.interrupted = None
        self._received = None
        if not self.save_on_signal or threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        for signum in (signal.SIGINT, signal.SIGTERM, self.requeue_signal):
            if signum is not None and signum not in self._previous:
                self._previous[signum] = signal.getsignal(signum)
                signal.signal(signum, self._handle)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_handlers()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._restore_handlers()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore_handlers()

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        received = signal.Signals(signum)
        if received == signal.SIGINT and self._received is not None:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without waiting for the step to end
        self._received = received
        previous = self._previous.get(received)
        if not callable(previous) or previous is signal.default_int_handler:
            return
        if received == self.requeue_signal:
            self._deferred.append((previous, received))  # e.g. submitit's requeue: after the checkpoint
        else:
            previous(signum, frame)  # e.g. Lightning's SIGTERM bookkeeping

    def _run_deferred(self) -> None:
        deferred, self._deferred = self._deferred, []
        for handler, signum in deferred:
            handler(int(signum), None)

    # ----------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"last_saved_step": self._last_saved_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._last_saved_step = int(state_dict.get("last_saved_step", -1))
