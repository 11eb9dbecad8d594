"""A callback that slows each training step down (tests send signals to a run that is still training)."""

from __future__ import annotations

import time

import pytorch_lightning as pl


class SlowSteps(pl.Callback):
    """Sleep ``seconds`` after every training batch."""

    def __init__(self, seconds: float = 0.3) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args, **kwargs) -> None:
        time.sleep(self.seconds)
