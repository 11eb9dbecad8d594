"""DistillationModule: a student trained by recognition loss + distillation objectives from a frozen teacher.

    L = recognition_weight * CE(student head, rows[:recognition_rows]) + sum_a w_a L_aux
        + sum_k w_k L_k(student Features, teacher Features, labels)

Arguments: RecognitionModule's, plus ``teacher`` (a :class:`~ekd.lit.sections.BackboneConfig` with
its ``checkpoint``), ``distill`` (a :class:`~ekd.lit.sections.DistillConfig`: the objectives and the
options below), ``batch_layout`` (row counts of the batch parts in batch order, for
``gather_global``; a mapping such as ``FaceDataModule.batch_layout`` gives them as its values),
``teacher_prefix`` (key prefix inside a Lightning teacher checkpoint; default ``student.``) and
``teacher_sha256`` (expected hash of the teacher file; filled in automatically).

The teacher is ``load_backbone(teacher.name, teacher.checkpoint)`` — a missing or mismatching file is
an error, never a random teacher. It is frozen: ``requires_grad=False``, kept in eval mode even when
Lightning calls ``.train()`` (so its BN statistics never move), run under ``torch.no_grad``, left out
of the optimizer and, unless ``save_teacher``, out of checkpoints (``teacher.*`` keys are dropped on
save and re-read from ``teacher.checkpoint`` on load; the file's SHA-256 is recorded in the hparams
as ``teacher_sha256`` and checked on every later construction, so a resumed run cannot silently
switch teachers).

Features. Student and teacher each give ``Features(embedding, stages)``; ``logits`` are filled only
when some objective requires them: the student's are its head's margin-free logits, the teacher's
are ``teacher_logit_scale * cos(f^_t, W^_t)`` against teacher class centres W_t taken from

- ``teacher_centres="head"``: the head stored in the teacher checkpoint (one of our checkpoints);
- ``"prototypes"``: the teacher's class prototypes (``ekd.distill.prototypes``), computed in one pass
  over the training data at fit start by ``TeacherPrototypesCallback`` (``ekd.distill.callbacks``,
  returned by :meth:`configure_callbacks`; the module itself never touches the datamodule): over
  the datamodule's ``prototype_dataloader()`` when it has one, else its ``train_dataloader()``, cached
  in ``prototype_cache`` when given, keyed by ``teacher sha256 / num_classes / datamodule
  fingerprint`` (``FaceDataModule.fingerprint``, the dataset fingerprint of ``ekd.data``); a
  ``prototype_cache`` with a datamodule that has no fingerprint is refused (two datasets would share
  one cache);
- ``"auto"``: the head when the checkpoint has one with ``num_classes`` rows, else prototypes.

The same centres go to objectives with ``needs_teacher_centres`` (MarginDistillation) and, with
``student_head_init="teacher_centres"`` / ``"freeze_teacher_centres"``, into the student head
(frozen with the latter). Every objective's ``requires`` is checked against both networks at
construction (from ``stage_shapes``, no forward pass), so a missing field fails at start-up naming
the objective and the field.

Objectives: ``objectives = {key: {"weight": w, **hparams}}``; ``key`` is the registry name, or any
name with ``"objective": <registry name>`` inside (to use one objective twice, e.g. two FitNet
stages). A missing weight is the objective's ``default_weight`` (``Objective.default_weight``, 1 unless
the class sets another). Objectives whose constructor takes ``student_shapes`` / ``teacher_shapes`` get
the backbones' ``stage_shapes`` there unless given (so their adapters exist before the optimizer);
then every objective's ``bind(ObjectiveContext)`` is called once, before the optimizer exists, with
the class count, both embedding sizes and stage shapes and the student head (``self.recognition``).
An objective with ``replaces_recognition`` computes the classification loss itself through that
head: the module then adds no ``recognition`` term (``recognition_weight`` is unused, the objective's
weight applies; the accuracy is still logged); at most one such objective per run. Objective state
kept in buffers is saved and restored with the checkpoint (``objectives.<key>.*`` keys).
Relational objectives see the global batch (``gather_global(..., layout=batch_layout)``), the others
this rank's rows. While an objective's ``hint_only(global_step)`` is True (FitNet's two-stage warm-up)
every other term gets weight 0: still computed and logged, and kept in the graph so that DDP sees a
gradient (zero) for every parameter. Each objective's adapters are trained.

Teacher embedding cache (``teacher_cache``: a folder written by ``ekd-cache build``, see
``ekd.distill.cache``). The cache must come from the same teacher file (SHA-256, checked at
construction) and the same training set (fingerprint, checked at fit start); otherwise
``TeacherCacheMismatchError`` names both. It can replace the teacher's forward pass when every
objective needs only the teacher's embedding or logits; the cache is then served by the data side:
:meth:`configure_callbacks` returns a ``TeacherCacheCallback`` (``ekd.distill.callbacks``) that
attaches it to the datamodule for the fit, and a datamodule that can serve it (``FaceDataModule``,
when its dataset augments by horizontal flips only) fills ``FaceBatch.teacher_embedding`` (the batch
contract, ``ekd/data/batch.py``) with each row's teacher embedding (of the image or its mirror, as
the student sees it). A batch that carries ``teacher_embedding`` skips the teacher; any other batch
runs it. Otherwise (stage-feature objectives such as FitNet, other augmentations, plain loaders) a
log line says why and the teacher runs online. Teacher prototypes are then computed from the cached
embeddings (every image and its mirror) instead of a pass of the teacher over the data. Whether a fit
used the cache: ``FaceDataModule.teacher_cache_active`` (after the fit too).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from pytorch_lightning import Callback
from torch import nn

from ekd.choices import StudentHeadInit, TeacherCentres
from ekd.data.batch import as_face_batch
from ekd.distill import OBJECTIVES, Objective, ObjectiveContext, gather_global
from ekd.distill import create as create_objective
from ekd.distill.cache import TeacherCacheMismatchError, TeacherEmbeddingCache, stage_feature_users
from ekd.distill.callbacks import TeacherCacheCallback, TeacherPrototypesCallback
from ekd.lit.recognition import (
    CHECKPOINT_META_KEY,
    RecognitionModule,
    load_class_centres,
    plain,
    split_weight,
)
from ekd.lit.sections import BackboneConfig, DistillConfig, as_section
from ekd.models.features import Features
from ekd.models.loading import file_sha256, load_backbone
from ekd.registry import accepted_options

log = logging.getLogger(__name__)


def _stage_shapes(backbone: nn.Module) -> dict[str, tuple[int, ...]]:
    """A backbone's ``stage_shapes`` as a plain dict of tuples (empty for a backbone without stages)."""
    return {
        name: tuple(int(n) for n in shape)
        for name, shape in dict(getattr(backbone, "stage_shapes", {})).items()
    }


def _features_spec(backbone: nn.Module, embedding_size: int, logits_classes: int | None) -> Features:
    """Empty tensors with the fields a backbone's ``forward_features`` provides (for ``requires`` checks)."""
    stages = {
        name: torch.empty(0, *shape) for name, shape in dict(getattr(backbone, "stage_shapes", {})).items()
    }
    logits = None if logits_classes is None else torch.empty(0, logits_classes)
    return Features(embedding=torch.empty(0, embedding_size), stages=stages, logits=logits)


class DistillationModule(RecognitionModule):
    """``self.student`` + head ``self.recognition`` + frozen ``self.teacher`` + ``self.objectives``.

    Arguments beyond RecognitionModule's: see the module docstring.
    """

    def __init__(
        self,
        student: BackboneConfig | Mapping[str, Any],
        num_classes: int,
        teacher: BackboneConfig | Mapping[str, Any],
        distill: DistillConfig | Mapping[str, Any] | None = None,
        batch_layout: list[int] | Mapping[str, int] | None = None,
        teacher_prefix: str | None = None,
        teacher_sha256: str | None = None,
        **recognition_kwargs: Any,
    ) -> None:
        teacher_config = as_section(BackboneConfig, plain(teacher), "teacher")
        distill_config = as_section(DistillConfig, plain(distill), "distill")
        # plain containers in hparams (RecognitionModule.__init__ saves this frame's arguments too)
        teacher = plain(dataclasses.asdict(teacher_config))
        distill = plain(dataclasses.asdict(distill_config))
        batch_layout = plain(batch_layout)
        if isinstance(batch_layout, Mapping):  # FaceDataModule.batch_layout: {"general": G, "balanced": B}
            batch_layout = list(batch_layout.values())  # insertion order = row order
        batch_layout = None if batch_layout is None else [int(n) for n in batch_layout]
        if batch_layout is not None and (not batch_layout or any(n < 1 for n in batch_layout)):
            raise ValueError(
                f"batch_layout must be a non-empty list of positive row counts, got {batch_layout}"
            )
        checkpoint = teacher_config.checkpoint
        if not checkpoint:
            raise ValueError("teacher.checkpoint is required: distillation never runs with a random teacher")
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(
                f"teacher checkpoint {str(checkpoint)!r} does not exist (distillation needs the "
                "trained teacher's weights; it never falls back to a random teacher)"
            )
        actual_sha256 = file_sha256(checkpoint)
        if teacher_sha256 is not None and teacher_sha256 != actual_sha256:
            raise ValueError(
                f"teacher checkpoint {checkpoint!r} has SHA-256 {actual_sha256}, but this run was "
                f"made with a teacher file of SHA-256 {teacher_sha256}: the teacher file changed"
            )
        teacher_sha256 = actual_sha256
        super().__init__(student, num_classes, **recognition_kwargs)
        self.teacher_config = teacher_config
        self.distill_config = distill_config
        objectives = distill_config.objectives
        student_head_init = distill_config.student_head_init
        embedding_size = self.student_config.embedding_size

        self.teacher = load_backbone(
            teacher_config.name,
            checkpoint,
            prefix=teacher_prefix,
            embedding_size=teacher_config.embedding_size,
            **teacher_config.kwargs,
        )
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        if self.hparams.channels_last:
            self.teacher.to(memory_format=torch.channels_last)
        teacher_dim = int(self.teacher.embedding_size)

        self.objectives = nn.ModuleDict()
        self.objective_weights: dict[str, float] = {}
        context = ObjectiveContext(
            num_classes=num_classes,
            student_embedding_size=embedding_size,
            teacher_embedding_size=teacher_dim,
            student_shapes=_stage_shapes(self.student),
            teacher_shapes=_stage_shapes(self.teacher),
            head=self.recognition,
        )
        for key, spec in objectives.items():
            self._add_objective(str(key), spec, context)
        self._check_replaces_recognition()
        self.needs_logits = any("logits" in obj.requires for obj in self.objectives.values())
        self.relational_stages = sorted(
            {name for obj in self.objectives.values() if obj.relational for name in obj.required_stages()}
        )
        needs_centres = (
            self.needs_logits
            or any(obj.needs_teacher_centres for obj in self.objectives.values())
            or student_head_init != StudentHeadInit.none
        )
        if self.needs_logits and self.recognition is None:
            users = [k for k, obj in self.objectives.items() if "logits" in obj.requires]
            raise ValueError(
                f"distillation objectives {users} need student logits, but the student has no head"
            )
        if student_head_init != StudentHeadInit.none:
            if self.recognition is None:
                raise ValueError(
                    f"student_head_init={student_head_init.value!r} needs a student head (head is None)"
                )
            if teacher_dim != embedding_size:
                raise ValueError(
                    f"student_head_init={student_head_init.value!r} copies {teacher_dim}-d teacher centres "
                    f"into a {embedding_size}-d student head: the embedding sizes must match"
                )

        # C x D teacher centres (non-persistent: re-derived from the teacher file or the prototypes)
        self.register_buffer("teacher_class_centres", torch.empty(0, teacher_dim), persistent=False)
        self.centres_source: str | None = None
        if needs_centres:
            self.centres_source = self._resolve_centres(
                distill_config.teacher_centres, checkpoint, teacher_dim
            )

        # requires checks: every field every objective needs, on both sides, before any training
        student_spec = _features_spec(
            self.student, embedding_size, num_classes if self.needs_logits else None
        )
        teacher_spec = _features_spec(self.teacher, teacher_dim, num_classes if self.needs_logits else None)
        for obj in self.objectives.values():
            obj.check_features(student_spec, "student")
            obj.check_features(teacher_spec, "teacher")

        # teacher embedding cache: checked against the teacher now; the data side checks it against the
        # dataset at fit start (TeacherCacheCallback) and serves FaceBatch.teacher_embedding
        self.teacher_cache: TeacherEmbeddingCache | None = None
        self._batch_teacher_embedding: torch.Tensor | None = None  # of the batch in training_step
        if distill_config.teacher_cache:
            cache = TeacherEmbeddingCache(distill_config.teacher_cache)
            cache.verify_teacher(teacher_sha256, teacher_config.name, checkpoint)
            if cache.embedding_size != teacher_dim:
                raise TeacherCacheMismatchError(
                    f"teacher cache {distill_config.teacher_cache} holds {cache.embedding_size}-d "
                    f"embeddings, the teacher {teacher_config.name!r} gives {teacher_dim}-d ones"
                )
            users = stage_feature_users(self.objectives)
            if users:
                self._cache_not_used(f"objectives {users} read the teacher's stage feature maps")
            else:
                self.teacher_cache = cache

    # ------------------------------------------------------------------------------- construction
    def _add_objective(self, key: str, spec: Any, context: ObjectiveContext) -> None:
        """Build one objective from its spec, give it the context (``bind``) and record its weight."""
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
        # the one mechanism for stage shapes: a constructor that takes them builds its adapters there,
        # so their parameters exist before configure_optimizers (see ekd.distill.base)
        accepted = accepted_options(OBJECTIVES.get(name))
        for side, shapes in (("student", context.student_shapes), ("teacher", context.teacher_shapes)):
            if f"{side}_shapes" in accepted and hparams.get(f"{side}_shapes") is None:
                hparams[f"{side}_shapes"] = dict(shapes)
        objective: Objective = create_objective(name, **hparams)
        default = float(objective.default_weight)
        weight, _ = split_weight(key, {"weight": weight if weight_given else default}, default, "objective")
        objective.bind(context)
        self.objectives[key] = objective
        self.objective_weights[key] = weight

    def replacing_objective(self) -> str | None:
        """Key of the objective that computes the recognition loss itself (``replaces_recognition``)."""
        keys = [key for key, obj in self.objectives.items() if obj.replaces_recognition]
        return keys[0] if keys else None

    def _check_replaces_recognition(self) -> None:
        keys = [key for key, obj in self.objectives.items() if obj.replaces_recognition]
        if len(keys) > 1:
            raise ValueError(
                f"distillation objectives {keys} each replace the recognition loss; at most one may"
            )
        if keys and self.recognition is None:
            raise ValueError(
                f"distillation objective {keys[0]!r} replaces the recognition loss and trains the student "
                "head, but the student has no head (head is None)"
            )

    def _resolve_centres(self, mode: TeacherCentres, checkpoint: str, teacher_dim: int) -> str:
        """Load head centres now ("head", or "auto" when present); else defer to prototypes at fit start."""
        if mode == TeacherCentres.prototypes:
            return "prototypes"
        centres = load_class_centres(checkpoint)
        num_classes = self.hparams.num_classes
        if centres is not None and tuple(centres.shape) == (num_classes, teacher_dim):
            self.set_teacher_centres(centres)
            return "head"
        if mode == TeacherCentres.head:
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
        mode = self.distill_config.student_head_init
        if mode == StudentHeadInit.none or self.teacher_class_centres.numel() == 0:
            return
        # direction is what the normalised heads use; unit rows also suit heads with ||W|| in the logit
        self.recognition.set_centres(
            F.normalize(self.teacher_class_centres, dim=1),
            freeze=mode == StudentHeadInit.freeze_teacher_centres,
        )

    def setup(self, stage: str) -> None:
        super().setup(stage)  # shards the student head first: set_centres then fills this rank's rows
        if stage != "fit":
            return
        if self.centres_source == "prototypes" and self.teacher_class_centres.numel() == 0:
            raise RuntimeError(
                "teacher class prototypes are not set at setup('fit'): TeacherPrototypesCallback (returned "
                "by configure_callbacks, run by Trainer.fit) computes them; when calling setup() yourself, "
                "call set_teacher_centres() first"
            )
        self._init_student_head()

    def configure_callbacks(self) -> list[Callback]:
        """The module's bridges to the training data (it never touches the datamodule itself).

        ``TeacherCacheCallback`` attaches ``teacher_cache`` to the datamodule for the fit (the data side
        then fills ``FaceBatch.teacher_embedding``); ``TeacherPrototypesCallback`` computes the teacher
        prototypes when the centres come from them. The cache callback comes first: prototypes are
        computed from the cache when the datamodule serves it.
        """
        callbacks = list(super().configure_callbacks() or [])
        cache_callback = None
        if self.teacher_cache is not None:
            cache_callback = TeacherCacheCallback(self.teacher_cache)
            callbacks.append(cache_callback)
        if self.centres_source == "prototypes":
            callbacks.append(
                TeacherPrototypesCallback(
                    self.hparams.num_classes,
                    self.hparams.teacher_sha256,
                    prototype_cache=self.distill_config.prototype_cache,
                    teacher_cache=cache_callback,
                )
            )
        return callbacks

    def _cache_not_used(self, reason: str) -> None:
        log.warning(
            "teacher cache %s not used: %s; the teacher runs online",
            self.distill_config.teacher_cache,
            reason,
        )

    # -------------------------------------------------------------------------------- mode / optim
    def train(self, mode: bool = True) -> DistillationModule:
        super().train(mode)
        teacher = self._modules.get("teacher")
        if teacher is not None:
            teacher.eval()  # frozen: BN statistics and dropout never in training mode
        return self

    def has_training_signal(self) -> bool:
        if self.replacing_objective() is None:
            recognition = super().has_training_signal()
        else:  # no cross-entropy term of the module's own: the replacing objective's weight counts
            recognition = any(w > 0 for w in self.aux_weights.values())
        return recognition or any(w > 0 for w in self.objective_weights.values())

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
        return self.distill_config.teacher_logit_scale * F.linear(
            F.normalize(embedding.detach(), dim=1), centres
        )

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
            # an objective that replaces_recognition computes the cross-entropy itself (context.head)
            terms, metrics = self.recognition_terms(
                embedding, labels, cross_entropy=self.replacing_objective() is None
            )
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

        hints = [key for key, objective in self.objectives.items() if objective.hint_only(self.global_step)]
        if hints:
            terms = {key: (weight if key in hints else 0.0, value) for key, (weight, value) in terms.items()}
        return terms, metrics

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        face = as_face_batch(batch)  # the batch contract: ekd/data/batch.py
        # only embeddings of this module's verified cache stand in for its teacher (never another one's)
        self._batch_teacher_embedding = face.teacher_embedding if self.teacher_cache is not None else None
        try:
            return super().training_step(face, batch_idx)
        finally:
            self._batch_teacher_embedding = None

    def _teacher_features(self, images: torch.Tensor, labels: torch.Tensor) -> Features:
        """The teacher's Features: the batch's ``teacher_embedding`` when it has one, else a forward pass."""
        embedding = self._batch_teacher_embedding
        if embedding is None:
            return self.teacher.forward_features(images)
        expected = (images.shape[0], int(self.teacher.embedding_size))
        if tuple(embedding.shape) != expected:
            raise ValueError(
                f"batch teacher_embedding has shape {tuple(embedding.shape)}, expected {expected} (one "
                "teacher embedding per row)"
            )
        return Features(embedding=embedding.to(images.device, non_blocking=True), stages={})

    # --------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if not self.distill_config.save_teacher:
            state = checkpoint.get("state_dict", {})
            for key in [k for k in state if k.startswith("teacher.")]:
                del state[key]
        checkpoint[CHECKPOINT_META_KEY]["teacher"] = {
            "name": self.teacher_config.name,
            "path": str(self.teacher_config.checkpoint),
            "sha256": self.hparams.teacher_sha256,
            "saved": bool(self.distill_config.save_teacher),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        recorded = checkpoint.get(CHECKPOINT_META_KEY, {}).get("teacher", {}).get("sha256")
        if recorded is not None and recorded != self.hparams.teacher_sha256:
            raise ValueError(
                f"this checkpoint was trained with a teacher file of SHA-256 {recorded}, but "
                f"{self.teacher_config.checkpoint!r} has SHA-256 {self.hparams.teacher_sha256}"
            )
        state = checkpoint.get("state_dict")
        if state is not None and not any(k.startswith("teacher.") for k in state):
            # the teacher was left out on save: take it from its file (loaded in __init__), so that
            # strict loading still checks every student / head / objective key
            for key, value in self.teacher.state_dict().items():
                state[f"teacher.{key}"] = value
