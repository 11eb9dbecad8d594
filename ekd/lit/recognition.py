"""RecognitionModule: trains a face backbone with a margin head (a teacher, or a student without KD).

The trained network is always ``self.student`` (checkpoint keys ``student.*``, what
``ekd.models.load_backbone`` reads by default) and the head is ``self.recognition`` (an
``ekd.heads.RecognitionLoss``). The loss of a step is

    L = recognition_weight * CE(head(f[:R]), y[:R]) + sum_a weight_a * L_a(f, y)

with ``R = recognition_rows`` (all rows when None: the EKD recipe puts cross-entropy on the first 32
"general" rows only) and the auxiliary losses ``a`` (center, triplet) on every row of the batch.

Precision. With ``fp32_losses`` (default) the head, the auxiliary losses and the distillation
objectives run in float32 with autocast off, on float32 copies of the features: under
'16-mixed' the fp16 cosine near 1 resolves angles to ~0.03 rad, which ArcFace's margin arithmetic
cannot afford. The backbones still run under the Trainer's autocast.

Non-finite guard (``nonfinite``). The loss and each term are checked for NaN / Inf on the device at
every step; under DDP the verdict is all-reduced so that every rank takes the same branch.
- ``"stop"`` (default): raise :class:`NonFiniteLossError` naming the first non-finite step (global
  step, epoch) and its non-finite term(s). The verdict is read back (one device sync for all the
  steps since the previous read) on the steps the loggers write (``trainer.log_every_n_steps``;
  every 50 steps when step logging is off), at every epoch end, at the end of the fit and before every
  checkpoint is written (:meth:`on_save_checkpoint` raises instead). So the error comes at most
  ``log_every_n_steps - 1`` optimizer steps after the bad one (those steps update the weights in
  memory, with non-finite values; a bad step that is itself a log step is caught before its update),
  no checkpoint and no logged value of a step from the bad one on is ever written, and the last
  checkpoint on disk predates the bad step. ``trainer.log_every_n_steps=1`` checks every step.
- ``"skip"``: no parameter update for this step, so the verdict is read back at every step (one
  device sync per step). Single process: ``training_step`` returns None (Lightning skips backward).
  DDP: Lightning forbids returning None there, so the step returns a zero loss built from the
  trainable parameters (every gradient is exactly 0, DDP's reducer is satisfied) and
  :meth:`optimizer_step` then leaves the optimizer untouched (no momentum or weight decay drift). BN
  running statistics touched by the bad forward are restored. The global step and the lr schedule
  still advance (one batch consumed); ``train/skipped_steps`` counts the skips. DDP caveats: the check
  costs one tiny all-reduce per step, and with ``accumulate_grad_batches > 1`` a bad micro-batch drops
  the whole accumulated update.

Logged (``train/``): ``loss``, ``loss_<term>`` (unweighted), ``acc`` (batch accuracy of the
margin-free logits on the recognition rows), ``embedding_norm`` (mean L2 norm of the raw embeddings),
the objectives' ``log_items``, ``lr`` and, in "skip" mode, ``skipped_steps``. A step's values are
stacked into one device tensor and added to the epoch sums on the device (no sync, no ``self.log``:
Lightning's costs ~0.25-0.5 ms per value, a GPU step a few ms), then
- ``train/<name>_step`` (``train/lr``, ``train/skipped_steps``): the value of that one step (not a
  mean), on the steps the loggers write (``trainer.log_every_n_steps``, Lightning's rule), handed to
  ``self.loggers`` directly with the keys, step and ``epoch`` Lightning's ``on_step`` logging gave
  them (one read-back for all values). They are not in ``trainer.callback_metrics``; a progress bar
  that shows metrics (a terminal's) gets ``loss``, ``acc`` and ``lr`` through ``self.log``;
- ``train/<name>_epoch``: the mean over the epoch's steps weighted by the batch size (skipped steps
  left out), through ``self.log`` in :meth:`on_train_epoch_end`, so it is in ``callback_metrics``
  for the callbacks that monitor metrics (``ModelCheckpoint``, ``EarlyStopping``; Lightning runs the
  other callbacks' epoch-end hooks before the module's). The epoch sums are in the checkpoint: a run
  resumed mid-epoch logs the same epoch means as an uninterrupted one.
``lr`` and ``skipped_steps`` have no epoch mean. Values are this rank's (no per-step all-reduce);
relational distillation terms are global anyway. :attr:`last_logged` holds the latest step's values
(for callbacks and tests).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import random
import sys
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as torch_dist
from pytorch_lightning.callbacks import RichProgressBar, TQDMProgressBar
from torch import nn

from ekd import dist
from ekd.choices import Nonfinite, choice_value, parse_choice
from ekd.data.batch import as_face_batch
from ekd.heads import AUX_LOSSES
from ekd.heads.loss import RecognitionLoss
from ekd.lit.optim import as_optim_config, as_schedule_config, build_optimizer, build_scheduler, param_groups
from ekd.lit.sections import BackboneConfig, HeadConfig, as_section
from ekd.models import create_backbone, read_checkpoint
from ekd.registry import accepted_options

# Checkpoint entry with what the loaders need to know about our checkpoints (see load_class_centres).
CHECKPOINT_META_KEY = "ekd"
# Where RecognitionLoss keeps the centres (replicated head / sharded head, whose state_dict holds all rows).
CENTRES_KEYS: tuple[str, ...] = ("recognition.classifier.weight", "recognition.classifier.head.weight")


class NonFiniteLossError(RuntimeError):
    """The loss or one of its terms became NaN or infinite (``nonfinite="stop"``)."""


# "stop" mode reads the non-finite verdict back at least this often when the loggers write no steps
DEFAULT_CHECK_INTERVAL = 50


@dataclasses.dataclass
class StepValues:
    """The detached values of one training step, stacked into one float32 device vector.

    ``names``: ``loss``, ``loss_<term>`` for each term, then the metrics; the first ``num_losses``
    entries (the loss and its terms) are what the non-finite guard checks.
    """

    step: int
    epoch: int
    names: tuple[str, ...]
    num_losses: int
    vector: torch.Tensor

    def losses(self) -> torch.Tensor:
        return self.vector[: self.num_losses]

    def describe(self) -> str:
        """The non-finite terms as ``name=value`` (reads the vector back: the error path only)."""
        total, *terms = self.vector[: self.num_losses].tolist()
        names = [name.removeprefix("loss_") for name in self.names[1 : self.num_losses]]
        bad = [f"{name}={value}" for name, value in zip(names, terms) if not math.isfinite(value)]
        if bad:
            return ", ".join(bad)
        return f"total={total} (every term is finite: a weight times a huge term)"


def plain(value: Any) -> Any:
    """OmegaConf containers (Hydra arguments) -> plain dicts/lists and enum members -> their values, so
    checkpoints stay torch.load-able with ``weights_only=True`` and hparams print cleanly. Other values
    pass through."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True, enum_to_str=True)
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    return choice_value(value)


def split_weight(name: str, spec: Mapping[str, Any] | None, default: float, what: str) -> tuple[float, dict]:
    """``{"weight": w, **hparams}`` -> (w, hparams); the weight must be a finite number >= 0."""
    if spec is None:
        spec = {}
    if not isinstance(spec, Mapping):
        raise ValueError(f"{what} {name!r}: expected a mapping {{weight: ..., <hparams>}}, got {spec!r}")
    hparams = dict(spec)
    weight = hparams.pop("weight", default)
    if (
        isinstance(weight, bool)
        or not isinstance(weight, (int, float))
        or not math.isfinite(weight)
        or weight < 0
    ):
        raise ValueError(f"{what} {name!r}: weight must be a finite number >= 0, got {weight!r}")
    return float(weight), hparams


def build_aux_loss(name: str, hparams: dict, embedding_size: int, num_classes: int) -> nn.Module:
    """The auxiliary loss registered as ``name`` in ``ekd.heads.AUX_LOSSES`` (``center``: CenterLoss,
    ``triplet``: TripletLoss), called as ``loss(embeddings, labels)``; ``embedding_size`` /
    ``num_classes`` are passed where it takes them. Unknown names and hyper-parameters are errors listing
    the known ones (UnknownNameError / UnknownOptionError, both ValueErrors)."""
    accepted = accepted_options(AUX_LOSSES.get(name))
    sizes = {"embedding_size": embedding_size, "num_classes": num_classes}
    given = sorted(set(sizes) & set(hparams))
    if given:
        raise ValueError(
            f"aux_losses.{name}: {given} come from the model, not from the loss's hyper-parameters"
        )
    return AUX_LOSSES.create(name, **{k: v for k, v in sizes.items() if k in accepted}, **hparams)


def load_class_centres(checkpoint_path: str) -> torch.Tensor | None:
    """The C x D head centres stored in one of our Lightning checkpoints; None when it has no head
    (e.g. an insightface ``backbone.pth``, which is a plain backbone state_dict)."""
    checkpoint = read_checkpoint(checkpoint_path)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, Mapping):
        raise ValueError(
            f"checkpoint {checkpoint_path!r} holds no state_dict (got {type(checkpoint).__name__})"
        )
    meta = checkpoint.get(CHECKPOINT_META_KEY, {}) if isinstance(checkpoint, dict) else {}
    keys = [meta["class_centres_key"]] if meta.get("class_centres_key") else list(CENTRES_KEYS)
    for key in keys:
        if key in state:
            centres = state[key]
            if not isinstance(centres, torch.Tensor) or centres.ndim != 2:
                raise ValueError(f"checkpoint {checkpoint_path!r}: {key} is not a C x D tensor")
            return centres.detach().float().clone()
    if meta.get("class_centres_key"):
        raise ValueError(
            f"checkpoint {checkpoint_path!r} names {meta['class_centres_key']} but lacks that key"
        )
    return None


class RecognitionModule(pl.LightningModule):
    """Backbone + margin head (+ center / triplet losses); see the module docstring.

    Args:
        student: the trained backbone (:class:`~ekd.lit.sections.BackboneConfig` or a mapping of it).
        num_classes: identities of the training set.
        head: the margin head (:class:`~ekd.lit.sections.HeadConfig`; default ArcFace); None: no head.
        aux_losses: ``{name: {weight: w, **hparams}}`` of ``ekd.heads.AUX_LOSSES`` (center, triplet).
        recognition_rows: cross-entropy on the first rows of each batch only (None: all rows).
        optim, schedule: :class:`~ekd.lit.optim.OptimConfig` / ``ScheduleConfig`` (or mappings).
        channels_last, nonfinite, fp32_losses: see the module docstring.
        recognition_weight: scale of the cross-entropy (0 keeps it logged but untrained).
        steps_per_epoch: needed only when the train loader has no length.
    """

    def __init__(
        self,
        student: BackboneConfig | Mapping[str, Any],
        num_classes: int,
        head: HeadConfig | Mapping[str, Any] | None = HeadConfig(),  # noqa: B008  (never mutated)
        aux_losses: dict | None = None,
        recognition_rows: int | None = None,
        optim: Any = None,
        schedule: Any = None,
        channels_last: bool = False,
        nonfinite: Nonfinite | str = Nonfinite.stop,
        recognition_weight: float = 1.0,
        steps_per_epoch: int | None = None,
        fp32_losses: bool = True,
    ) -> None:
        super().__init__()
        # typed sections for the code, plain containers in hparams (the checkpoint stays
        # weights_only-loadable and load_from_checkpoint rebuilds the module from them)
        self.student_config = as_section(BackboneConfig, plain(student), "student")
        self.head_config = None if head is None else as_section(HeadConfig, plain(head), "head")
        student = plain(dataclasses.asdict(self.student_config))
        head = None if self.head_config is None else plain(dataclasses.asdict(self.head_config))
        aux_losses = plain(aux_losses) or {}
        optim = plain(dataclasses.asdict(as_optim_config(plain(optim))))
        schedule = plain(dataclasses.asdict(as_schedule_config(plain(schedule))))
        nonfinite = parse_choice(Nonfinite, nonfinite, "nonfinite").value
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if recognition_rows is not None and (
            isinstance(recognition_rows, bool)
            or not isinstance(recognition_rows, int)
            or recognition_rows < 1
        ):
            raise ValueError(f"recognition_rows must be a positive int or None, got {recognition_rows!r}")
        if steps_per_epoch is not None and (not isinstance(steps_per_epoch, int) or steps_per_epoch < 1):
            raise ValueError(f"steps_per_epoch must be a positive int or None, got {steps_per_epoch!r}")
        recognition_weight, _ = split_weight("recognition", {"weight": recognition_weight}, 1.0, "loss")
        self.save_hyperparameters()
        # Lightning lets the most specific __init__ frame win, and a subclass's frame still holds the
        # raw arguments (Hydra's DictConfigs): put back the normalized values and make every other one a
        # plain container, or fit(ckpt_path=...) (weights_only=True) could not read the checkpoint back.
        normalized = dict(
            student=student,
            head=head,
            aux_losses=aux_losses,
            optim=optim,
            schedule=schedule,
            nonfinite=nonfinite,
            recognition_weight=recognition_weight,
        )
        self._set_hparams({key: normalized.get(key, plain(value)) for key, value in self.hparams.items()})
        self._hparams_initial = copy.deepcopy(self._hparams)

        embedding_size = self.student_config.embedding_size
        self.student = create_backbone(
            self.student_config.name, embedding_size=embedding_size, **self.student_config.kwargs
        )
        self.recognition: RecognitionLoss | None = None
        if self.head_config is not None:
            self.recognition = RecognitionLoss(
                self.head_config.name,
                embedding_size,
                num_classes,
                sharded=self.head_config.sharded,
                sample_rate=self.head_config.sample_rate,
                **self.head_config.kwargs,
            )
        self.aux_losses = nn.ModuleDict()
        self.aux_weights: dict[str, float] = {}
        for name, spec in aux_losses.items():
            weight, hparams = split_weight(name, spec, 1.0, "aux loss")
            self.aux_losses[name] = build_aux_loss(name, hparams, embedding_size, num_classes)
            self.aux_weights[name] = weight
        if channels_last:
            self.student.to(memory_format=torch.channels_last)

        self.skipped_steps = 0
        self._skip_update = False
        self._warned_nonfinite_weights = False
        self._buffer_snapshot: list[torch.Tensor] | None = None
        self._last_values: StepValues | None = None  # the latest step's (see last_logged)
        # "stop" mode: steps whose values are not checked yet (read back together, see check_nonfinite)
        self._unchecked: list[StepValues] = []
        # per-epoch sums on the device: names of a step -> [sum of batch_size * values, rows]
        self._epoch_sums: dict[tuple[str, ...], list[Any]] = {}
        self._epoch_of_sums: int | None = None
        self._sums_restored = False

    # ------------------------------------------------------------------------------- construction
    def has_training_signal(self) -> bool:
        """Whether some term of the loss trains the student (checked at fit start)."""
        return (self.recognition is not None and self.hparams.recognition_weight > 0) or any(
            w > 0 for w in self.aux_weights.values()
        )

    def trainable_modules(self) -> list[nn.Module]:
        """Modules whose parameters the optimizer updates (never a teacher)."""
        modules: list[nn.Module] = [self.student, self.aux_losses]
        if self.recognition is not None:
            modules.append(self.recognition)
        return modules

    def teacher_centres_key(self) -> str | None:
        """state_dict key of the class centres of this module's head (None without a head)."""
        if self.recognition is None:
            return None
        target = self.recognition.head.weight
        for name, param in self.named_parameters():
            if param is target:
                return name
        return None  # pragma: no cover - the head weight is always a registered parameter

    def setup(self, stage: str) -> None:
        if stage == "fit" and not self.has_training_signal():
            raise ValueError(
                f"{type(self).__name__}: nothing to train (no head with recognition_weight > 0, no "
                "weighted loss)"
            )
        if self.recognition is not None:
            # a no-op unless sharded_head / sample_rate < 1 under DDP: keep this rank's rows, before
            # configure_optimizers and before DDP wraps the module
            self.recognition.shard_(root=self)

    # -------------------------------------------------------------------------------- optimisation
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch (converts epoch milestones and warm-up to steps)."""
        if self.hparams.steps_per_epoch is not None:
            return int(self.hparams.steps_per_epoch)
        trainer = self.trainer
        if trainer.train_dataloader is None:
            trainer.fit_loop.setup_data()  # what estimated_stepping_batches does, but also for max_epochs=-1
        batches = trainer.num_training_batches
        if not math.isfinite(batches):
            raise ValueError(
                "the train loader has no length, so steps per epoch are unknown: pass steps_per_epoch= "
                "to the module"
            )
        return max(1, math.ceil(int(batches) / trainer.accumulate_grad_batches))

    def configure_optimizers(self) -> dict[str, Any]:
        optim = as_optim_config(self.hparams.optim)
        groups = param_groups(self.trainable_modules(), optim.weight_decay, optim.no_decay_norm_and_bias)
        optimizer = build_optimizer(groups, optim)
        schedule = as_schedule_config(self.hparams.schedule)
        steps_per_epoch = self.steps_per_epoch()
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            if schedule.name in ("poly", "cosine"):
                raise ValueError(
                    f"schedule {schedule.name!r} decays over the whole run: set the Trainer's max_steps "
                    "or max_epochs"
                )
            total = sys.maxsize  # step / constant schedules never look at the end of the run
        scheduler = build_scheduler(optimizer, schedule, steps_per_epoch, int(total))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        if optimizer_closure is None or self.hparams.nonfinite != "skip":
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # the closure runs training_step (+ backward), which decides whether this update is skipped
        loss = optimizer_closure()
        if self._skip_update:
            self._skip_update = False
            return None
        return optimizer.step(closure=lambda: loss)

    # ---------------------------------------------------------------------------------- loop costs
    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets (and resets) _current_fx_name around every hook it calls, about 50 times a
        # step; nn.Module.__setattr__ first checks each value against parameters, buffers and
        # submodules, which costs more than the assignment. It is a plain string attribute.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # ------------------------------------------------------------------------------------- forward
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Raw N x D student embeddings."""
        return self.student(self._prepare_images(images))

    def _prepare_images(self, images: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last and images.ndim == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def _loss_dtype(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.float() if self.hparams.fp32_losses and tensor.is_floating_point() else tensor

    def _autocast_off(self) -> contextlib.AbstractContextManager:
        """Autocast disabled for the loss computations when ``fp32_losses`` (else unchanged)."""
        if self.hparams.fp32_losses:
            return torch.autocast(device_type=self.device.type, enabled=False)
        return contextlib.nullcontext()

    def _check_batch(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError(f"a training batch must be (images, labels), got {type(batch).__name__}")
        images, labels = batch
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise ValueError(
                f"batch images must be an N x 3 x H x W tensor, got {getattr(images, 'shape', images)}"
            )
        if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"batch labels must be a 1-D tensor with one label per image ({images.shape[0]}), "
                f"got {getattr(labels, 'shape', labels)}"
            )
        rows = self.hparams.recognition_rows
        if rows is not None and rows > images.shape[0]:
            raise ValueError(f"recognition_rows={rows} but the batch has only {images.shape[0]} rows")
        return images, labels.long()

    def recognition_terms(
        self, embedding: torch.Tensor, labels: torch.Tensor, *, cross_entropy: bool = True
    ) -> tuple[dict[str, tuple[float, torch.Tensor]], dict[str, torch.Tensor]]:
        """Weighted terms {name: (weight, value)} and metrics of the recognition side, in float32.

        ``cross_entropy=False`` leaves out the head's term (a distillation objective that
        ``replaces_recognition`` computes it instead); the auxiliary losses stay.
        """
        terms: dict[str, tuple[float, torch.Tensor]] = {}
        metrics: dict[str, torch.Tensor] = {"embedding_norm": embedding.detach().norm(dim=1).mean()}
        rows = self.hparams.recognition_rows or embedding.shape[0]
        if self.recognition is not None and cross_entropy:
            loss, _ = self.recognition(embedding[:rows], labels[:rows])
            terms["recognition"] = (self.hparams.recognition_weight, loss)
        for name, module in self.aux_losses.items():
            terms[name] = (self.aux_weights[name], module(embedding, labels))
        return terms, metrics

    def accuracy(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Fraction of rows whose largest logit is the label."""
        return (logits.detach().argmax(dim=1) == labels).float().mean()

    def loss_terms(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[dict[str, tuple[float, torch.Tensor]], dict[str, torch.Tensor]]:
        """All weighted loss terms and the metrics of one batch (overridden by DistillationModule)."""
        features = self.student.forward_features(images)
        with self._autocast_off():
            embedding = self._loss_dtype(features.embedding)
            terms, metrics = self.recognition_terms(embedding, labels)
            if self.recognition is not None:
                rows = self.hparams.recognition_rows or embedding.shape[0]
                with torch.no_grad():
                    logits = self.recognition.margin_free_logits(embedding[:rows].detach())
                metrics["acc"] = self.accuracy(logits, labels[:rows])
        return terms, metrics

    # ------------------------------------------------------------------------------------ training
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        face = as_face_batch(batch)  # the batch contract (ekd/data/batch.py): FaceBatch or (images, labels)
        # uint8 rows from a loader without FaceDataModule's device transform; a no-op on float images
        face = face.normalised()
        images, labels = self._check_batch((face.images, face.labels))
        images = self._prepare_images(images)
        skip_mode = self.hparams.nonfinite == "skip"
        if skip_mode:
            self._snapshot_buffers()
        self._last_values = None
        terms, metrics = self.loss_terms(images, labels)
        total = sum(weight * value for weight, value in terms.values())
        values = self._step_values(total, terms, metrics)
        if skip_mode:
            # the update must not happen: the verdict is needed now (one device sync per step)
            if not self._finite(values.losses()):
                return self._handle_nonfinite()
        else:
            self._unchecked.append(values)  # read back later, with the steps around it
        self._last_values = values
        self._add_to_epoch(values, images.shape[0])
        if self._logs_this_step():
            self.check_nonfinite()  # nothing of a bad step reaches a logger
            self._log_step()
        elif len(self._unchecked) >= self._check_interval():
            self.check_nonfinite()
        return total

    def _step_values(
        self,
        total: torch.Tensor,
        terms: dict[str, tuple[float, torch.Tensor]],
        metrics: dict[str, torch.Tensor],
    ) -> StepValues:
        """The step's loss, terms and metrics as one detached float32 device vector (one stack op)."""
        names = ("loss", *(f"loss_{name}" for name in terms), *metrics)
        items = [total, *(value for _, value in terms.values()), *metrics.values()]
        with torch.no_grad():  # one op for all values (no graph, no per-value detach or cast)
            vector = torch.stack([item.reshape(()) if item.ndim else item for item in items]).float()
        return StepValues(self.global_step, self.current_epoch, names, 1 + len(terms), vector)

    @property
    def last_logged(self) -> dict[str, torch.Tensor]:
        """The values of the latest step, by name (``loss``, ``loss_<term>``, metrics; detached float32
        views); empty before the first step and after a skipped one. For callbacks and tests."""
        values = self._last_values
        return {} if values is None else dict(zip(values.names, values.vector.unbind()))

    def _logs_this_step(self) -> bool:
        """Whether the loggers write this step (Lightning's ``log_every_n_steps`` rule)."""
        trainer = self._trainer
        if trainer is None:
            return False
        connector = getattr(trainer, "_logger_connector", None)
        return bool(getattr(connector, "should_update_logs", True) or trainer.fast_dev_run)

    def _check_interval(self) -> int:
        """Unchecked steps after which "stop" mode reads the verdict back even without a log step."""
        every = int(getattr(self._trainer, "log_every_n_steps", 0) or 0) if self._trainer is not None else 0
        return every if every > 0 else DEFAULT_CHECK_INTERVAL

    def _finite(self, losses: torch.Tensor) -> bool:
        """Whether every value is finite on every rank (one device sync; an all-reduce under DDP)."""
        bad = (~torch.isfinite(losses)).any().float()
        if dist.is_distributed():
            torch_dist.all_reduce(bad, op=torch_dist.ReduceOp.MAX)  # every rank takes the same branch
        return not bool(bad.item())

    def check_nonfinite(self) -> None:
        """In "stop" mode: read back whether a step since the previous check had a non-finite loss or
        term (one device sync for all of them) and raise :class:`NonFiniteLossError` naming the first.

        A no-op when no step is pending. Under DDP it is a collective: every rank calls it at the same
        steps (the module does: log steps, epoch ends, checkpoints, the end of the fit)."""
        unchecked, self._unchecked = self._unchecked, []
        if not unchecked or self.hparams.nonfinite != "stop":
            return
        if self._finite(torch.cat([values.losses() for values in unchecked])):
            return
        first = next((values for values in unchecked if not self._finite_here(values)), None)
        if first is None:
            where = f"on another rank (rank {dist.rank()} is finite)"
            step, epoch = unchecked[0].step, unchecked[0].epoch
            when = f"global steps {step}-{unchecked[-1].step} (epoch {epoch})"
        else:
            where = first.describe()
            when = f"global step {first.step} (epoch {first.epoch})"
        raise NonFiniteLossError(
            f"non-finite loss at {when}: {where}. Training stopped at global step {self.global_step}; no "
            "checkpoint was written from that step on, so the last checkpoint on disk predates it. Lower "
            "the lr, check the data, or use nonfinite='skip'."
        )

    @staticmethod
    def _finite_here(values: StepValues) -> bool:
        return bool(torch.isfinite(values.losses()).all())

    def _handle_nonfinite(self) -> torch.Tensor | None:
        """In "skip" mode: restore the BN statistics, count the skip and make the update a no-op."""
        self._restore_buffers()
        self.skipped_steps += 1
        self._skip_update = True
        if not self._warned_nonfinite_weights and not self._weights_finite():
            # the weights themselves diverged (e.g. a finite loss with overflowing gradients): every later
            # step skips too, and the run ends with null metrics; say so once instead of going on silently
            self._warned_nonfinite_weights = True
            if dist.rank() == 0:
                warnings.warn(
                    f"nonfinite='skip': the trainable weights are non-finite at global step "
                    f"{self.global_step}; every remaining step will be skipped and the evaluation will "
                    "record null metrics",
                    stacklevel=2,
                )
        if self._trainer is not None:  # the loggers get it with the step values (_log_step)
            self.log(
                "train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False, logger=False
            )
        if dist.is_distributed():
            # Lightning forbids None under DDP: zero gradients for every trainable parameter
            params = [p for m in self.trainable_modules() for p in m.parameters() if p.requires_grad]
            return sum((p * 0).sum() for p in params)
        return None

    def _weights_finite(self) -> bool:
        """Whether every trainable parameter is finite (one device sync)."""
        params = [p.detach() for m in self.trainable_modules() for p in m.parameters()]
        return not params or bool(torch.stack([torch.isfinite(p).all() for p in params]).all())

    def _trainable_buffers(self) -> list[torch.Tensor]:
        return [b for m in self.trainable_modules() for b in m.buffers()]

    def _snapshot_buffers(self) -> None:
        self._buffer_snapshot = [b.detach().clone() for b in self._trainable_buffers()]

    def _restore_buffers(self) -> None:
        if self._buffer_snapshot is None:
            return
        with torch.no_grad():
            for buffer, saved in zip(self._trainable_buffers(), self._buffer_snapshot):
                buffer.copy_(saved)
        self._buffer_snapshot = None

    # ------------------------------------------------------------------------------------- logging
    def _add_to_epoch(self, values: StepValues, batch_size: int) -> None:
        """epoch sums += batch_size * values, on the device (what Lightning's on_epoch mean sums)."""
        if self._epoch_of_sums != values.epoch:
            self._epoch_sums = {}
            self._epoch_of_sums = values.epoch
        entry = self._epoch_sums.get(values.names)
        if entry is None:
            self._epoch_sums[values.names] = [values.vector * batch_size, batch_size]
        else:
            entry[0].add_(values.vector, alpha=batch_size)
            entry[1] += batch_size

    def epoch_means(self) -> dict[str, torch.Tensor]:
        """Batch-size-weighted means of every value over this epoch's steps so far (0-d device tensors)."""
        sums: dict[str, torch.Tensor] = {}
        rows: dict[str, int] = {}
        for names, (vector, count) in self._epoch_sums.items():
            for name, value in zip(names, vector.unbind()):
                sums[name] = sums[name] + value if name in sums else value
                rows[name] = rows.get(name, 0) + count
        return {name: sums[name] / rows[name] for name in sums}

    def _log_step(self) -> None:
        """This step's values as ``train/<name>_step`` to the loggers (on the steps they write).

        They go to ``self.loggers`` directly, with the step and ``epoch`` Lightning would give them:
        ``self.log`` costs ~0.25-0.5 ms per value (a distillation run logs ~20), and this is one
        read-back for all. So they are not in ``trainer.callback_metrics`` (the epoch means are); a
        progress bar that shows metrics (a terminal's) gets ``loss``, ``acc`` and ``lr`` via ``self.log``.
        """
        values = self._last_values
        lr = self.trainer.optimizers[0].param_groups[0]["lr"] if self.trainer.optimizers else None
        if self.loggers and self.trainer.is_global_zero:
            # the keys Lightning gave values logged both per step and per epoch: <name>_step, <name>_epoch
            metrics = dict(zip((f"train/{name}_step" for name in values.names), values.vector.tolist()))
            if lr is not None:
                metrics["train/lr"] = lr
            if self.hparams.nonfinite == "skip":
                metrics["train/skipped_steps"] = float(self.skipped_steps)
            metrics["epoch"] = self.current_epoch
            for logger in self.loggers:
                logger.log_metrics(metrics, step=self.global_step)
        if isinstance(self.trainer.progress_bar_callback, (RichProgressBar, TQDMProgressBar)):
            shown = {f"{name}_step": v for name, v in self.last_logged.items() if name in ("loss", "acc")}
            if lr is not None:
                shown["lr"] = lr
            for name, value in shown.items():
                self.log(f"train/{name}", value, on_step=True, on_epoch=False, prog_bar=True, logger=False)

    def on_train_start(self) -> None:
        if self._sums_restored:  # a checkpoint's mid-epoch sums: they belong to the epoch being resumed
            for entry in self._epoch_sums.values():
                entry[0] = entry[0].to(self.device)  # restored before the module moved to its device
        else:
            self._epoch_sums, self._epoch_of_sums = {}, None
        self._sums_restored = False
        self._unchecked = []

    def on_train_epoch_end(self) -> None:
        self.check_nonfinite()  # before anything of a bad step is logged, evaluated or saved
        if self._epoch_of_sums == self.current_epoch:
            for name, value in self.epoch_means().items():
                self.log(f"train/{name}_epoch", value, on_step=False, on_epoch=True, batch_size=1)
        self._epoch_sums, self._epoch_of_sums = {}, None

    def on_train_end(self) -> None:
        self.check_nonfinite()  # steps after the last epoch end (max_steps inside an epoch)

    # --------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # "stop" mode: a step with a non-finite loss may still be unchecked; raising here writes nothing
        self.check_nonfinite()
        meta = checkpoint.setdefault(CHECKPOINT_META_KEY, {})
        meta["class_centres_key"] = self.teacher_centres_key()
        meta["skipped_steps"] = self.skipped_steps
        meta["epoch_sums"] = self._epoch_sums_state()
        checkpoint[RNG_STATES_KEY] = gather_rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get(CHECKPOINT_META_KEY, {})
        self.skipped_steps = int(meta.get("skipped_steps", 0))
        self._load_epoch_sums(meta.get("epoch_sums"))
        restore_rng_states(checkpoint.get(RNG_STATES_KEY))

    def _epoch_sums_state(self) -> dict[str, Any] | None:
        """The epoch sums so far (tensors, lists and numbers: weights_only-loadable), or None."""
        if self._epoch_of_sums is None or not self._epoch_sums:
            return None
        return {
            "epoch": self._epoch_of_sums,
            "parts": [
                {"names": list(names), "sums": vector.detach().cpu(), "rows": rows}
                for names, (vector, rows) in self._epoch_sums.items()
            ],
        }

    def _load_epoch_sums(self, state: dict[str, Any] | None) -> None:
        self._epoch_sums, self._epoch_of_sums = {}, None
        if not state:
            return
        self._epoch_of_sums = int(state["epoch"])
        for part in state["parts"]:
            self._epoch_sums[tuple(part["names"])] = [part["sums"].float(), int(part["rows"])]
        self._sums_restored = True


# Random-number generator states of every rank, so that a resumed run draws the same dropout masks,
# PartialFC class samples, etc. as an uninterrupted one (the samplers are seeded by (seed, epoch) and
# saved by the datamodule; this covers the global generators).
RNG_STATES_KEY = "ekd_rng_states"


def _rng_state() -> dict[str, Any]:
    # tensors, lists and numbers only: our checkpoints must stay loadable with weights_only=True
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss_next],
    }


def gather_rng_states() -> list[dict[str, Any]]:
    """This process's generator states, one entry per rank (a collective under DDP: every rank calls
    it, as Lightning does when it saves a checkpoint)."""
    if not dist.is_distributed():
        return [_rng_state()]
    states: list[Any] = [None] * dist.world_size()
    torch_dist.all_gather_object(states, _rng_state())
    return states


def restore_rng_states(states: list[dict[str, Any]] | None) -> None:
    """Restore this rank's generators from :func:`gather_rng_states`'s list; a checkpoint of another
    world size restores nothing (with a warning): its streams cannot be mapped onto these ranks."""
    if not states:
        return
    if len(states) != dist.world_size():
        warnings.warn(
            f"the checkpoint holds the random-number generator states of {len(states)} rank(s), this run "
            f"has {dist.world_size()}: generators are not restored, so dropout / class sampling draws "
            "differ from an uninterrupted run",
            stacklevel=2,
        )
        return
    state = states[dist.rank()]
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
