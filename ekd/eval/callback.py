"""Verification during training: a pytorch_lightning Callback running the .bin protocol.

Every ``every_n_steps`` optimiser steps and/or every ``every_n_epochs`` epochs the backbone is put in
eval mode, each configured set (uint8 images N x 3 x 112 x 112 + pair labels) is embedded with flip
test-time augmentation and scored with :func:`ekd.eval.verify`; the backbone's previous mode is then
restored. Logged keys: ``val/<set>/acc``, ``val/<set>/acc_std``, ``val/<set>/xnorm``,
``val/<set>/tpr@fpr=1e-4`` (one per resolvable FPR anchor) and ``val/mean_acc``.

Under DDP every rank embeds one contiguous slice and the slices are gathered, so every rank computes
identical metrics; they are logged without ``sync_dist`` (the logger writes on rank zero only).

Embedding and scoring are :func:`ekd.eval.evaluate.verify_sets` (the routine ekd-train and ekd-eval
use). A set whose embeddings are non-finite (a diverged network) is warned about and logged with
``val/<set>/acc`` = NaN, and ``val/mean_acc`` is then NaN too, so that a checkpoint monitor never
picks such a model as its best.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import pytorch_lightning as pl
from torch import nn

from ekd import dist
from ekd.eval import metrics
from ekd.eval.evaluate import VerificationSets, result_record, select_sets, verify_sets
from ekd.eval.verification import VerificationResult


class VerificationCallback(pl.Callback):
    """Evaluate verification sets during training and log their metrics (module docstring).

    sets: name -> (uint8 images 2N x 3 x H x W, N issame labels); ``None`` asks
        ``trainer.datamodule.verification_sets()`` once, at the first evaluation; a list of names
        takes those sets from it (what a config can give, e.g. ``[lfw, cfp_fp]``).
    every_n_steps: evaluate after every n-th optimiser step (``None``: never by steps).
    every_n_epochs: evaluate at the end of every n-th training epoch (``None``: never by epochs).
    model_attr: attribute of the LightningModule holding the backbone, or a callable returning it.
    """

    def __init__(
        self,
        sets: VerificationSets | Iterable[str] | None = None,
        every_n_steps: int | None = None,
        every_n_epochs: int | None = 1,
        batch_size: int = 256,
        model_attr: str | Callable[[pl.LightningModule], nn.Module] = "student",
        fprs: Iterable[float] = metrics.FPR_TARGETS,
        n_folds: int = 10,
        flip: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("every_n_steps", every_n_steps), ("every_n_epochs", every_n_epochs)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"VerificationCallback {name} must be a positive int or None, got {value!r}")
        if every_n_steps is None and every_n_epochs is None:
            raise ValueError("VerificationCallback needs every_n_steps or every_n_epochs (both are None)")
        if batch_size < 1:
            raise ValueError(f"VerificationCallback batch_size must be >= 1, got {batch_size}")
        self.names: list[str] | None = None
        self.sets: dict | None = None
        if isinstance(sets, Mapping):
            self.sets = dict(sets)
        elif sets is not None:
            self.names = [str(name) for name in sets]
        self.every_n_steps = every_n_steps
        self.every_n_epochs = every_n_epochs
        self.batch_size = batch_size
        self.model_attr = model_attr
        self.fprs = tuple(float(f) for f in fprs)
        self.n_folds = n_folds
        self.flip = flip
        #: latest results: {"step", "epoch", "mean_acc", "sets": {name: VerificationResult.to_dict()}}
        self.latest: dict = {}
        self._last_step_evaluated = -1

    # -- configuration -------------------------------------------------------------------------

    def _resolve_sets(self, trainer: pl.Trainer) -> dict:
        if self.sets is None:
            datamodule = getattr(trainer, "datamodule", None)
            getter = getattr(datamodule, "verification_sets", None)
            if getter is None:
                raise ValueError(
                    "VerificationCallback got no sets and the trainer's datamodule "
                    f"({type(datamodule).__name__}) has no verification_sets() method"
                )
            self.sets = select_sets(getter(), self.names, "VerificationCallback sets")
        for name, value in self.sets.items():
            if not (isinstance(value, (tuple, list)) and len(value) == 2):
                raise ValueError(
                    f"verification set {name!r} must be (uint8 images, issame), got {type(value).__name__}"
                )
        return self.sets

    def _backbone(self, pl_module: pl.LightningModule) -> nn.Module:
        if callable(self.model_attr) and not isinstance(self.model_attr, str):
            backbone = self.model_attr(pl_module)
        else:
            backbone = getattr(pl_module, self.model_attr, None)
            if backbone is None:
                raise AttributeError(
                    f"{type(pl_module).__name__} has no attribute {self.model_attr!r} holding the backbone; "
                    "pass VerificationCallback(model_attr=<name or callable>)"
                )
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"the backbone to evaluate must be an nn.Module, got {type(backbone).__name__}")
        return backbone

    # -- hooks ---------------------------------------------------------------------------------

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args, **kwargs) -> None:
        step = trainer.global_step
        if (
            self.every_n_steps
            and step > 0
            and step % self.every_n_steps == 0
            and step != self._last_step_evaluated
        ):
            self.evaluate(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        due = self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        # a step evaluation that just ran for this very step is not repeated at the epoch end
        if due and trainer.global_step != self._last_step_evaluated:
            self.evaluate(trainer, pl_module)

    # -- work ----------------------------------------------------------------------------------

    def evaluate(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> dict[str, VerificationResult | None]:
        """Evaluate every set now, log the metrics and update ``self.latest``; returns the results
        (``None`` for a set with non-finite embeddings)."""
        sets = self._resolve_sets(trainer)
        backbone = self._backbone(pl_module)
        # embedding puts the backbone in eval mode and restores each submodule's previous mode on exit
        results = verify_sets(
            backbone,
            sets,
            self.batch_size,
            flip=self.flip,
            n_folds=self.n_folds,
            fprs=self.fprs,
            shard=dist.is_distributed(),
        )

        logged: dict[str, float] = {}
        for name, res in results.items():
            if res is None:
                logged[f"val/{name}/acc"] = float("nan")
                continue
            logged[f"val/{name}/acc"] = res.accuracy
            logged[f"val/{name}/acc_std"] = res.accuracy_std
            if res.xnorm is not None:
                logged[f"val/{name}/xnorm"] = res.xnorm
            for fpr, tpr in res.tpr_at_fpr.items():
                if not math.isnan(tpr):  # unresolvable anchors are not logged (see ekd.eval.metrics)
                    logged[f"val/{name}/tpr@fpr={metrics.fpr_key(fpr)}"] = tpr
        accuracies = [float("nan") if r is None else r.accuracy for r in results.values()]
        mean_acc = float(np.mean(accuracies)) if results else float("nan")
        if results:
            logged["val/mean_acc"] = mean_acc
        for key, value in logged.items():
            # identical on every rank (gathered embeddings), so no sync_dist reduction is needed
            pl_module.log(key, value, sync_dist=False)

        self._last_step_evaluated = trainer.global_step
        self.latest = {
            "step": int(trainer.global_step),
            "epoch": int(trainer.current_epoch),
            "mean_acc": None if math.isnan(mean_acc) else mean_acc,
            "sets": {name: result_record(res) for name, res in results.items()},
        }
        return results
