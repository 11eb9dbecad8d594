"""DistillationModule: a student trained by recognition loss + distillation objectives from a frozen teacher.

    L = recognition_weight * CE(student head, rows[:recognition_rows]) + sum_a w_a L_aux
        + sum_k w_k L_k(student Features, teacher Features, labels)

The teacher is ``load_backbone(teacher, teacher_checkpoint)`` — a missing or mismatching file is an
error, never a random teacher. It is frozen: ``requires_grad=False``, kept in eval mode even when
Lightning calls ``.train()`` (so its BN statistics never move), run under ``torch.no_grad``, left out
of the optimizer and, unless ``save_teacher``, out of checkpoints (``teacher.*`` keys are dropped on
save and re-read from ``teacher_checkpoint`` on load; the file's SHA-256 is recorded in the hparams
as ``teacher_sha256`` and checked on every later construction, so a resumed run cannot silently
switch teachers).

Features. Student and teacher each give ``Features(embedding, stages)``; ``logits`` are filled only
when some objective requires them: the student's are its head's margin-free logits, the teacher's
are ``teacher_logit_scale * cos(f^_t, W^_t)`` against teacher class centres W_t taken from

- ``teacher_centres="head"``: the head stored in the teacher checkpoint (one of our checkpoints);
- ``"prototypes"``: the teacher's class prototypes (``ekd.distill.prototypes``), computed in one pass
  over the training data at fit start (``datamodule.prototype_dataloader()`` when the datamodule
  has one, else its ``train_dataloader()``), cached in ``prototype_cache`` when given, keyed by
  ``teacher sha256 / num_classes / datamodule.fingerprint()`` (``FaceDataModule.fingerprint``, the
  dataset fingerprint of ``ekd.data``); a ``prototype_cache`` with a datamodule that has no
  fingerprint is refused (two datasets would share one cache);
- ``"auto"``: the head when the checkpoint has one with ``num_classes`` rows, else prototypes.

The same centres go to objectives with ``needs_teacher_centres`` (MarginDistillation) and, with
``student_head_init="teacher_centres"`` / ``"freeze_teacher_centres"``, into the student head
(frozen with the latter). Every objective's ``requires`` is checked against both networks at
construction (from ``stage_shapes``, no forward pass), so a missing field fails at start-up naming
the objective and the field.

Objectives: ``objectives = {key: {"weight": w, **hparams}}``; ``key`` is the registry name, or any
name with ``"objective": <registry name>`` inside (to use one objective twice, e.g. two FitNet
stages). A missing weight is the objective's ``default_weight`` (1 when it has none). Objectives
whose constructor takes ``student_shapes`` / ``teacher_shapes`` get the backbones' ``stage_shapes``
unless given. Relational objectives see the global batch (``gather_global(..., layout=batch_layout)``),
the others this rank's rows. While an objective's ``hint_only(global_step)`` is True (FitNet's
two-stage warm-up) every other term gets weight 0: still computed and logged, and kept in the graph
so that DDP sees a gradient (zero) for every parameter. Each objective's adapters are trained.

Teacher embedding cache (``teacher_cache``: a folder written by ``ekd-cache build``, see
``ekd.distill.cache``). The cache must come from the same teacher file (SHA-256, checked at
construction) and the same training set (fingerprint, checked at fit start); otherwise
``TeacherCacheMismatchError`` names both. It replaces the teacher's forward pass when every objective
needs only the teacher's embedding or logits and the datamodule's dataset augments by horizontal
flips only; the module then switches the datamodule to ``(images, labels, indices, flipped)`` batches
and reads each row's teacher embedding (of the image or its mirror, as the student sees it). Otherwise
(stage-feature objectives such as FitNet, other augmentations, plain loaders) a log line says why and
the teacher runs online. Teacher prototypes are then computed from the cached embeddings (every image
and its mirror) instead of a pass of the teacher over the data.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ekd.distill import create as create_objective
from ekd.distill import gather_global, objective_class
from ekd.distill.cache import (
    TeacherCacheMismatchError,
    TeacherEmbeddingCache,
    cache_unusable_reason,
    stage_feature_users,
)
from ekd.distill.prototypes import compute_class_prototypes, load_or_compute_prototypes
from ekd.lit.recognition import (
    CHECKPOINT_META_KEY,
    RecognitionModule,
    load_class_centres,
    plain,
    split_weight,
)
from ekd.models.features import Features
from ekd.models.loading import file_sha256, load_backbone

log = logging.getLogger(__name__)

TEACHER_CENTRES: tuple[str, ...] = ("auto", "head", "prototypes")
STUDENT_HEAD_INIT: tuple[str, ...] = ("none", "teacher_centres", "freeze_teacher_centres")


def _features_spec(backbone: nn.Module, embedding_size: int, logits_classes: int | None) -> Features:
    """Empty tensors with the fields a backbone's ``forward_features`` provides (for ``requires`` checks)."""
    stages = {
        name: torch.empty(0, *shape) for name, shape in dict(getattr(backbone, "stage_shapes", {})).items()
    }
    logits = None if logits_classes is None else torch.empty(0, logits_classes)
    return Features(embedding=torch.empty(0, embedding_size), stages=stages, logits=logits)


class DistillationModule(RecognitionModule):
    """``self.student`` + head ``self.recognition`` + frozen ``self.teacher`` + ``self.objectives``.

    Arguments beyond RecognitionModule's: see the module docstring. Added to the documented interface:
    ``teacher_prefix`` (key prefix inside a Lightning teacher checkpoint; default: ``student.``, i.e.
    the network a RecognitionModule trained) and ``teacher_sha256`` (expected hash of the teacher
    file; filled in automatically and checked when the module is rebuilt from a checkpoint).
    """

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        teacher: str,
        teacher_checkpoint: str,
        objectives: dict[str, dict] | None = None,
        teacher_kwargs: dict | None = None,
        teacher_centres: str = "auto",
        prototype_cache: str | None = None,
        teacher_logit_scale: float = 64.0,
        student_head_init: str = "none",
        batch_layout: list[int] | None = None,
        save_teacher: bool = False,
        teacher_prefix: str | None = None,
        teacher_sha256: str | None = None,
        teacher_cache: str | None = None,
        **recognition_kwargs: Any,
    ) -> None:
        objectives = plain(objectives) or {}
        teacher_kwargs = plain(teacher_kwargs) or {}
        batch_layout = None if batch_layout is None else [int(n) for n in plain(batch_layout)]
        if teacher_centres not in TEACHER_CENTRES:
            raise ValueError(
                f"teacher_centres: expected one of {list(TEACHER_CENTRES)}, got {teacher_centres!r}"
            )
        if student_head_init not in STUDENT_HEAD_INIT:
            raise ValueError(
                f"student_head_init: expected one of {list(STUDENT_HEAD_INIT)}, got {student_head_init!r}"
            )
        if not teacher_logit_scale > 0:
            raise ValueError(f"teacher_logit_scale must be > 0, got {teacher_logit_scale!r}")
        if batch_layout is not None and (not batch_layout or any(n < 1 for n in batch_layout)):
            raise ValueError(
                f"batch_layout must be a non-empty list of positive row counts, got {batch_layout}"
            )
        if not isinstance(objectives, Mapping):
            raise ValueError(f"objectives must map names to {{weight: ..., <hparams>}}, got {objectives!r}")
        if not teacher_checkpoint:
            raise ValueError("teacher_checkpoint is required: distillation never runs with a random teacher")
        if not os.path.isfile(teacher_checkpoint):
            raise FileNotFoundError(
                f"teacher checkpoint {str(teacher_checkpoint)!r} does not exist (distillation needs the "
                "trained teacher's weights; it never falls back to a random teacher)"
            )
        actual_sha256 = file_sha256(teacher_checkpoint)
        if teacher_sha256 is not None and teacher_sha256 != actual_sha256:
            raise ValueError(
                f"teacher checkpoint {teacher_checkpoint!r} has SHA-256 {actual_sha256}, but this run was "
                f"made with a teacher file of SHA-256 {teacher_sha256}: the teacher file changed"
            )
        teacher_sha256 = actual_sha256
        # RecognitionModule.__init__ calls save_hyperparameters(), which also collects this frame's arguments
        super().__init__(backbone, num_classes, **recognition_kwargs)

        self.teacher = load_backbone(teacher, teacher_checkpoint, prefix=teacher_prefix, **teacher_kwargs)
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        if self.hparams.channels_last:
            self.teacher.to(memory_format=torch.channels_last)
        teacher_dim = int(self.teacher.embedding_size)

        self.objectives = nn.ModuleDict()
        self.objective_weights: dict[str, float] = {}
        for key, spec in objectives.items():
            self._add_objective(str(key), spec)
        self.needs_logits = any("logits" in obj.requires for obj in self.objectives.values())
        self.relational_stages = sorted(
            {name for obj in self.objectives.values() if obj.relational for name in obj.required_stages()}
        )
        needs_centres = (
            self.needs_logits
            or any(obj.needs_teacher_centres for obj in self.objectives.values())
            or student_head_init != "none"
        )
        if self.needs_logits and self.recognition is None:
            users = [k for k, obj in self.objectives.items() if "logits" in obj.requires]
            raise ValueError(
                f"distillation objectives {users} need student logits, but the student has no head"
            )
        if student_head_init != "none":
            if self.recognition is None:
                raise ValueError(
                    f"student_head_init={student_head_init!r} needs a student head (head is None)"
                )
            if teacher_dim != self.hparams.embedding_size:
                raise ValueError(
                    f"student_head_init={student_head_init!r} copies {teacher_dim}-d teacher centres into a "
                    f"{self.hparams.embedding_size}-d student head: the embedding sizes must match"
                )

        # C x D teacher centres (non-persistent: re-derived from the teacher file or the prototypes)
        self.register_buffer("teacher_class_centres", torch.empty(0, teacher_dim), persistent=False)
        self.centres_source: str | None = None
        if needs_centres:
            self.centres_source = self._resolve_centres(teacher_centres, teacher_checkpoint, teacher_dim)

        # requires checks: every field every objective needs, on both sides, before any training
        student_spec = _features_spec(
            self.student, self.hparams.embedding_size, num_classes if self.needs_logits else None
        )
        teacher_spec = _features_spec(self.teacher, teacher_dim, num_classes if self.needs_logits else None)
        for obj in self.objectives.values():
            obj.check_features(student_spec, "student")
            obj.check_features(teacher_spec, "teacher")

        # teacher embedding cache: checked against the teacher now, against the dataset at fit start
        self.teacher_cache: TeacherEmbeddingCache | None = None
        self.cache_active = False  # set in setup("fit") when the training data can be served
        self._batch_meta: tuple[torch.Tensor, torch.Tensor] | None = None
        if teacher_cache:
            cache = TeacherEmbeddingCache(teacher_cache)
            cache.verify_teacher(teacher_sha256, teacher, teacher_checkpoint)
            if cache.embedding_size != teacher_dim:
                raise TeacherCacheMismatchError(
                    f"teacher cache {teacher_cache} holds {cache.embedding_size}-d embeddings, the teacher "
                    f"{teacher!r} gives {teacher_dim}-d ones"
                )
            users = stage_feature_users(self.objectives)
            if users:
                self._cache_not_used(f"objectives {users} read the teacher's stage feature maps")
            else:
                self.teacher_cache = cache

    # ------------------------------------------------------------------------------- construction
    def _add_objective(self, key: str, spec: Any) -> None:
        if not isinstance(spec, Mapping):
            raise ValueError(
                f"objective {key!r}: expected a mapping {{weight: ..., <hparams>}}, got {spec!r}"
            )
        hparams = dict(spec)
        name = str(hparams.pop("objective", key))
        if "." in key or not key:
            raise ValueError(f"objective key {key!r} must be a non-empty name without dots")
        weight_given = "weight" in hparams
        weight = hparams.pop("weight", None)
        accepted = inspect.signature(objective_class(name).__init__).parameters
        for side, backbone in (("student", self.student), ("teacher", self.teacher)):
            if f"{side}_shapes" in accepted and hparams.get(f"{side}_shapes") is None:
                hparams[f"{side}_shapes"] = {k: tuple(v) for k, v in backbone.stage_shapes.items()}
        objective = create_objective(name, **hparams)
        default = float(getattr(objective, "default_weight", 1.0))
        weight, _ = split_weight(key, {"weight": weight if weight_given else default}, default, "objective")
        self.objectives[key] = objective
        self.objective_weights[key] = weight

    def _resolve_centres(self, mode: str, checkpoint: str, teacher_dim: int) -> str:
        """Load head centres now ("head", or "auto" when present); else defer to prototypes at fit start."""
        if mode == "prototypes":
            return "prototypes"
        centres = load_class_centres(checkpoint)
        num_classes = self.hparams.num_classes
        if centres is not None and tuple(centres.shape) == (num_classes, teacher_dim):
            self.set_teacher_centres(centres)
            return "head"
        if mode == "head":
            found = "no recognition head" if centres is None else f"a head of shape {tuple(centres.shape)}"
            raise ValueError(
                f"teacher_centres='head': teacher checkpoint {checkpoint!r} has {found}, expected "
                f"{num_classes} x {teacher_dim} centres; use teacher_centres='prototypes' (or 'auto')"
            )
        return "prototypes"

    def set_teacher_centres(self, centres: torch.Tensor) -> None:
        """Install C x D teacher centres: logits, objectives that need them, the student head init."""
        expected = (self.hparams.num_classes, int(self.teacher.embedding_size))
        if tuple(centres.shape) != expected:
            raise ValueError(f"teacher centres must have shape {expected}, got {tuple(centres.shape)}")
        if not bool(torch.isfinite(centres).all()):
            raise ValueError("teacher centres contain NaN or infinite values")
        device = self.teacher_class_centres.device
        self.teacher_class_centres = centres.detach().float().to(device)
        for obj in self.objectives.values():
            if obj.needs_teacher_centres:
                obj.set_teacher_centres(self.teacher_class_centres)

    def _init_student_head(self) -> None:
        mode = self.hparams.student_head_init
        if mode == "none" or self.teacher_class_centres.numel() == 0:
            return
        # direction is what the normalised heads use; unit rows also suit heads with ||W|| in the logit
        self.recognition.set_centres(
            F.normalize(self.teacher_class_centres, dim=1), freeze=mode == "freeze_teacher_centres"
        )

    def setup(self, stage: str) -> None:
        super().setup(stage)  # shards the student head first: set_centres then fills this rank's rows
        if stage != "fit":
            return
        if self.teacher_cache is not None:
            self.cache_active = self._enable_teacher_cache()
        if self.centres_source == "prototypes" and self.teacher_class_centres.numel() == 0:
            self.set_teacher_centres(self._prototypes())
        self._init_student_head()

    def _cache_not_used(self, reason: str) -> None:
        log.warning(
            "teacher cache %s not used: %s; the teacher runs online", self.hparams.teacher_cache, reason
        )

    def _enable_teacher_cache(self) -> bool:
        """Verify the cache against the training data and ask the data for sample indices and flips.

        Returns False (with a log line saying why) when the data cannot be served from the cache; raises
        TeacherCacheMismatchError when the cache was built for another dataset.
        """
        datamodule = getattr(self.trainer, "datamodule", None)
        dataset = getattr(datamodule, "dataset", None)
        if dataset is None:
            self._cache_not_used(
                "the training data does not come from a datamodule with a `dataset` (needed to check the "
                "dataset fingerprint and to know each row's sample index and flip)"
            )
            return False
        reason = cache_unusable_reason(dataset)
        if reason is not None:
            self._cache_not_used(reason)
            return False
        assert self.teacher_cache is not None
        self.teacher_cache.verify_dataset(dataset)
        # batches become (images, labels, indices, flipped); set before the loader is built
        if hasattr(type(datamodule), "return_index"):
            datamodule.return_index = True
        else:
            dataset.return_index = True
        log.info("teacher cache %s: teacher embeddings are read from the cache", self.hparams.teacher_cache)
        return True

    def _prototypes(self) -> torch.Tensor:
        trainer = self.trainer
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None:
            raise ValueError(
                "teacher class prototypes are computed from the training data at fit start: pass a "
                "datamodule to Trainer.fit (or use teacher_centres='head' with a teacher checkpoint that "
                "has a head)"
            )
        if self.cache_active:
            return self._cached_prototypes()
        data_id = self._data_fingerprint(datamodule) if self.hparams.prototype_cache is not None else None
        loader_fn = getattr(datamodule, "prototype_dataloader", None) or datamodule.train_dataloader
        device = trainer.strategy.root_device
        original = next(self.teacher.parameters()).device
        self.teacher.to(device)
        try:
            loader = loader_fn()
            cache = self.hparams.prototype_cache
            num_classes = self.hparams.num_classes
            if cache is None:
                return compute_class_prototypes(self.teacher, loader, num_classes, device)
            fingerprint = f"teacher={self.hparams.teacher_sha256};classes={num_classes};data={data_id}"
            return load_or_compute_prototypes(cache, fingerprint, self.teacher, loader, num_classes, device)
        finally:
            self.teacher.to(original)
            self.teacher.eval()

    def _data_fingerprint(self, datamodule: Any) -> str:
        """The datamodule's dataset fingerprint (``fingerprint()`` or ``fingerprint``), for the prototype key.

        Without one, prototypes of two different datasets could share ``prototype_cache``: refused.
        """
        value = getattr(datamodule, "fingerprint", None)
        value = value() if callable(value) else value
        if not isinstance(value, str) or not value:
            raise ValueError(
                f"prototype_cache={self.hparams.prototype_cache!r}: the datamodule "
                f"({type(datamodule).__name__}) has no dataset fingerprint (a `fingerprint()` method or "
                f"`fingerprint` attribute giving a non-empty string; got {value!r}), so cached prototypes "
                "could be reused for another dataset; use ekd.data.FaceDataModule, give the datamodule a "
                "fingerprint, or drop prototype_cache"
            )
        return value

    def _cached_prototypes(self, chunk: int = 65536) -> torch.Tensor:
        """Prototypes from the cached embeddings of every image and its mirror (no teacher pass)."""
        cache = self.teacher_cache
        assert cache is not None

        def batches():
            for start in range(0, cache.num_images, chunk):
                indices = torch.arange(start, min(start + chunk, cache.num_images))
                labels = torch.from_numpy(np.array(cache.labels[start : start + chunk], dtype=np.int64))
                for flip in (False, True):
                    yield cache.lookup(indices, torch.full(indices.shape, flip)), labels

        return compute_class_prototypes(nn.Identity(), batches(), self.hparams.num_classes)

    # -------------------------------------------------------------------------------- mode / optim
    def train(self, mode: bool = True) -> DistillationModule:
        super().train(mode)
        teacher = self._modules.get("teacher")
        if teacher is not None:
            teacher.eval()  # frozen: BN statistics and dropout never in training mode
        return self

    def has_training_signal(self) -> bool:
        return super().has_training_signal() or any(w > 0 for w in self.objective_weights.values())

    def trainable_modules(self) -> list[nn.Module]:
        return [*super().trainable_modules(), self.objectives]

    # ------------------------------------------------------------------------------------- forward
    def teacher_logits(self, embedding: torch.Tensor) -> torch.Tensor:
        """teacher_logit_scale * cos(f^_t, W^_t) against the teacher centres (N x C, no gradient)."""
        if self.teacher_class_centres.numel() == 0:
            raise RuntimeError(
                "teacher class centres are not set (prototypes are computed in setup('fit')); "
                "call set_teacher_centres() when using the module outside Trainer.fit"
            )
        centres = F.normalize(self.teacher_class_centres.to(embedding.dtype), dim=1)
        return self.hparams.teacher_logit_scale * F.linear(F.normalize(embedding.detach(), dim=1), centres)

    def loss_terms(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[dict[str, tuple[float, torch.Tensor]], dict[str, torch.Tensor]]:
        layout = self.hparams.batch_layout
        if layout is not None and sum(layout) != images.shape[0]:
            raise ValueError(f"batch_layout {layout} does not add up to the batch size {images.shape[0]}")
        student = self.student.forward_features(images)
        with torch.no_grad():
            teacher = self._teacher_features(images, labels)
        rows = self.hparams.recognition_rows or images.shape[0]
        with self._autocast_off():
            embedding = self._loss_dtype(student.embedding)
            student = Features(embedding=embedding, stages=student.stages)
            teacher = Features(embedding=self._loss_dtype(teacher.embedding), stages=teacher.stages)
            terms, metrics = self.recognition_terms(embedding, labels)
            if self.needs_logits:
                student.logits = self.recognition.margin_free_logits(embedding)
                teacher.logits = self.teacher_logits(teacher.embedding)
                metrics["acc"] = self.accuracy(student.logits[:rows], labels[:rows])
            elif self.recognition is not None:
                with torch.no_grad():
                    logits = self.recognition.margin_free_logits(embedding[:rows].detach())
                metrics["acc"] = self.accuracy(logits, labels[:rows])

            global_batch: tuple[Features, Features, torch.Tensor] | None = None
            for key, objective in self.objectives.items():
                if objective.relational:
                    if global_batch is None:
                        global_batch = gather_global(
                            student, teacher, labels, layout, stages=self.relational_stages
                        )
                    value = objective(*global_batch)
                else:
                    value = objective(student, teacher, labels)
                terms[key] = (self.objective_weights[key], value)
                for item, item_value in objective.log_items().items():
                    name = item if item.startswith(f"{objective.name}/") else f"{key}/{item}"
                    metrics[name] = item_value

        hints = [
            key
            for key, objective in self.objectives.items()
            if hasattr(objective, "hint_only") and objective.hint_only(self.global_step)
        ]
        if hints:
            terms = {key: (weight if key in hints else 0.0, value) for key, (weight, value) in terms.items()}
        return terms, metrics

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        # (images, labels, indices, flipped) batches carry what the teacher cache looks up
        self._batch_meta = None
        if isinstance(batch, (tuple, list)) and len(batch) == 4:
            images, labels, indices, flipped = batch
            self._batch_meta = (indices, flipped)
            batch = (images, labels)
        try:
            return super().training_step(batch, batch_idx)
        finally:
            self._batch_meta = None

    def _teacher_features(self, images: torch.Tensor, labels: torch.Tensor) -> Features:
        """The teacher's Features of the batch: from the cache when active, else a forward pass."""
        if self.cache_active and self._batch_meta is not None:
            assert self.teacher_cache is not None
            indices, flipped = self._batch_meta
            self.teacher_cache.check_labels(indices, labels)
            embedding = self.teacher_cache.lookup(indices, flipped).to(images.device, non_blocking=True)
            return Features(embedding=embedding, stages={})
        if self.cache_active:
            raise ValueError(
                "the teacher cache is active but a training batch has no (indices, flipped): expected "
                "(images, labels, indices, flipped) batches from the datamodule"
            )
        return self.teacher.forward_features(images)

    # --------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if not self.hparams.save_teacher:
            state = checkpoint.get("state_dict", {})
            for key in [k for k in state if k.startswith("teacher.")]:
                del state[key]
        checkpoint[CHECKPOINT_META_KEY]["teacher"] = {
            "name": self.hparams.teacher,
            "path": str(self.hparams.teacher_checkpoint),
            "sha256": self.hparams.teacher_sha256,
            "saved": bool(self.hparams.save_teacher),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        recorded = checkpoint.get(CHECKPOINT_META_KEY, {}).get("teacher", {}).get("sha256")
        if recorded is not None and recorded != self.hparams.teacher_sha256:
            raise ValueError(
                f"this checkpoint was trained with a teacher file of SHA-256 {recorded}, but "
                f"{self.hparams.teacher_checkpoint!r} has SHA-256 {self.hparams.teacher_sha256}"
            )
        state = checkpoint.get("state_dict")
        if state is not None and not any(k.startswith("teacher.") for k in state):
            # the teacher was left out on save: take it from its file (loaded in __init__), so that
            # strict loading still checks every student / head / objective key
            for key, value in self.teacher.state_dict().items():
                state[f"teacher.{key}"] = value
