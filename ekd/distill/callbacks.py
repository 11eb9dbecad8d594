"""Lightning callbacks between a DistillationModule and the training data.

The LightningModule never touches the datamodule: what distillation needs from the training data goes
through these callbacks, which ``DistillationModule.configure_callbacks()`` returns (cache first:
prototypes may be computed from it).

- :class:`TeacherCacheCallback` attaches the module's teacher embedding cache (``ekd.distill.cache``)
  to ``trainer.datamodule`` at ``setup("fit")`` (the datamodule's own ``setup("fit")``, which runs
  first, detaches the cache of an earlier fit, so a later fit with another teacher never receives
  this one's embeddings; after the fit ``teacher_cache_active`` still tells whether it used one). A datamodule
  that serves teacher embeddings (:class:`ekd.data.batch.ServesTeacherEmbeddings`, e.g.
  ``ekd.data.FaceDataModule``) verifies the cache against its dataset and fills
  ``FaceBatch.teacher_embedding``; the module uses that field when present and runs its teacher
  otherwise. Any other datamodule (or plain loaders): a log line says why and the teacher runs online.
- :class:`TeacherPrototypesCallback` computes the teacher class prototypes (``ekd.distill.prototypes``)
  at ``setup("fit")`` and installs them with ``pl_module.set_teacher_centres``: from the attached
  cache when it is used (every image and its mirror), else with a teacher pass over
  ``datamodule.prototype_dataloader()`` (when the datamodule has one) or ``train_dataloader()``;
  with ``prototype_cache`` the result is stored keyed by ``teacher=<sha256>;classes=<C>;data=<dataset
  fingerprint of the datamodule>``.

Order of a fit: the callbacks' ``setup`` runs after the datamodule's and before the module's, so the
module's ``setup("fit")`` shards its student head and then copies the prototypes into it
(``student_head_init``), all before the optimizer is built and DDP wraps the model.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pytorch_lightning as pl
import torch

from ekd.data.batch import ServesTeacherEmbeddings
from ekd.distill.cache import TeacherEmbeddingCache
from ekd.distill.prototypes import (
    cached_class_prototypes,
    compute_class_prototypes,
    load_or_compute_prototypes,
)

log = logging.getLogger(__name__)


class TeacherCacheCallback(pl.Callback):
    """Attach ``cache`` to the trainer's datamodule for the length of a fit (see the module docstring).

    After ``setup("fit")``, ``used`` says whether the datamodule serves the cached embeddings (False:
    the teacher runs online, a log line said why); ``active`` is True from then until ``teardown``.
    """

    def __init__(self, cache: TeacherEmbeddingCache) -> None:
        self.cache = cache
        self.used: bool | None = None
        self._datamodule: ServesTeacherEmbeddings | None = None

    @property
    def active(self) -> bool:
        return self._datamodule is not None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        datamodule = trainer.datamodule
        if not isinstance(datamodule, ServesTeacherEmbeddings):
            log.warning(
                "teacher cache %s not used: %s; the teacher runs online",
                self.cache.directory,
                "the training data does not come from a datamodule that serves teacher embeddings "
                f"(got {type(datamodule).__name__}; ekd.data.FaceDataModule does: it knows each row's "
                "sample index and flip and checks the dataset fingerprint)",
            )
            self.used = False
            return
        self.used = bool(datamodule.attach_teacher_cache(self.cache))
        if self.used:
            self._datamodule = datamodule

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # the datamodule keeps the cache (its teacher_cache_active records the fit) until its next
        # setup("fit"); the module ignores embeddings unless it was built with this cache
        if stage == "fit":
            self._datamodule = None


class TeacherPrototypesCallback(pl.Callback):
    """Compute the teacher class prototypes at ``setup("fit")`` and install them in the module.

    Args:
        num_classes: number of classes (rows of the prototypes).
        teacher_sha256: SHA-256 of the teacher file (part of the ``prototype_cache`` key).
        prototype_cache: file caching the prototypes across runs (None: computed for this run only).
        teacher_cache: the fit's :class:`TeacherCacheCallback` (prototypes come from the cache when it is
            used; it must come before this callback).

    The module needs ``teacher`` (an ``nn.Module`` mapping images to embeddings),
    ``teacher_class_centres`` (nothing is computed when already set) and ``set_teacher_centres``.
    """

    def __init__(
        self,
        num_classes: int,
        teacher_sha256: str,
        prototype_cache: str | os.PathLike | None = None,
        teacher_cache: TeacherCacheCallback | None = None,
    ) -> None:
        self.num_classes = int(num_classes)
        self.teacher_sha256 = teacher_sha256
        self.prototype_cache = prototype_cache
        self.teacher_cache = teacher_cache

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or pl_module.teacher_class_centres.numel() > 0:
            return
        pl_module.set_teacher_centres(self.prototypes(trainer, pl_module.teacher))

    def prototypes(self, trainer: pl.Trainer, teacher: torch.nn.Module) -> torch.Tensor:
        """C x D prototypes of ``teacher`` over the trainer's training data (or its cached embeddings)."""
        datamodule = trainer.datamodule
        if datamodule is None:
            raise ValueError(
                "teacher class prototypes are computed from the training data at fit start: pass a "
                "datamodule to Trainer.fit (or use teacher_centres='head' with a teacher checkpoint that "
                "has a head)"
            )
        if self.teacher_cache is not None and self.teacher_cache.active:
            return cached_class_prototypes(self.teacher_cache.cache, self.num_classes)
        data_id = self._data_fingerprint(datamodule) if self.prototype_cache is not None else None
        loader_fn = getattr(datamodule, "prototype_dataloader", None) or datamodule.train_dataloader
        device = trainer.strategy.root_device
        original = next(teacher.parameters()).device
        teacher.to(device)  # the module is not on its device yet at setup
        try:
            loader = loader_fn()
            if self.prototype_cache is None:
                return compute_class_prototypes(teacher, loader, self.num_classes, device)
            key = f"teacher={self.teacher_sha256};classes={self.num_classes};data={data_id}"
            return load_or_compute_prototypes(
                self.prototype_cache, key, teacher, loader, self.num_classes, device
            )
        finally:
            teacher.to(original)
            teacher.eval()

    def _data_fingerprint(self, datamodule: Any) -> str:
        """The datamodule's dataset fingerprint (``fingerprint()`` or ``fingerprint``), for the cache key.

        Without one, prototypes of two different datasets could share ``prototype_cache``: refused.
        """
        value = getattr(datamodule, "fingerprint", None)
        value = value() if callable(value) else value
        if not isinstance(value, str) or not value:
            raise ValueError(
                f"prototype_cache={self.prototype_cache!r}: the datamodule "
                f"({type(datamodule).__name__}) has no dataset fingerprint (a `fingerprint()` method or "
                f"`fingerprint` attribute giving a non-empty string; got {value!r}), so cached prototypes "
                "could be reused for another dataset; use ekd.data.FaceDataModule, give the datamodule a "
                "fingerprint, or drop prototype_cache"
            )
        return value
