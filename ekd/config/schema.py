"""Typed schemas of the ``ekd-train`` configuration (Hydra structured configs).

``TrainConfig`` is the base of the primary config ``conf/train.yaml``: every YAML group file and every
command-line override is merged into it, so an unknown key (``trainer.max_epoch=3``) or a value of the
wrong type or outside a closed set (``data.sampler=ekdd``) fails at composition time with OmegaConf's
message naming the full key and the expected type / choices.

Free-form mappings are kept where the keys depend on a registry entry (backbone, head and objective
hyper-parameters, the synthetic benchmark's options); those are checked by name when the parts are
built (``ekd.cli.train``), so a typo there also fails before training starts.

The optimiser and schedule schemas are ``ekd.lit.optim.OptimConfig`` / ``ScheduleConfig`` (one
definition, shared with the training modules).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional  # noqa: UP035  (OmegaConf resolves these annotations at runtime)

from omegaconf import MISSING

from ekd.lit.optim import OptimConfig, ScheduleConfig

# OmegaConf 2.3 reads the annotations with ``typing.get_type_hints``; ``Optional[X]`` and ``dict``/``list``
# generics are what it understands (no ``X | None`` on Python 3.10), hence the older spelling below.
# ruff: noqa: UP007, UP045


class DataSource(str, Enum):
    """Where the training images come from (see ``ekd.data.FaceDataModule``)."""

    synthetic = "synthetic"
    rec = "rec"
    folder = "folder"


class Sampler(str, Enum):
    """Batch composition: uniform, EKD's general + identity-balanced parts, or P identities x K images."""

    random = "random"
    ekd = "ekd"
    pk = "pk"


class Nonfinite(str, Enum):
    """What the training module does with a non-finite loss: stop the run, or skip the step."""

    stop = "stop"
    skip = "skip"


class ProgressBar(str, Enum):
    rich = "rich"
    tqdm = "tqdm"
    none = "none"


@dataclass
class DataConfig:
    """Training data and verification sets (arguments of ``ekd.data.FaceDataModule``)."""

    name: str = MISSING  # dataset label used in run names and tables: ms1mv2, synthetic, ...
    source: DataSource = MISSING
    root: Optional[str] = None  # directory of the .rec/.idx/property (+ .bin) files, or an image folder
    val_sets: Optional[list[str]] = None  # verification sets; None = the datamodule's defaults
    sampler: Sampler = Sampler.random
    batch_size: int = 128  # per device, used by the random sampler
    general: int = 32  # EKD sampler: uniform images per device
    identities: int = 8  # EKD / PK samplers: identities per device
    images_per_identity: int = 4
    flip: bool = True
    num_workers: int = 2
    pin_memory: bool = True
    persistent_workers: bool = True
    synthetic: Optional[dict[str, Any]] = None  # options of the synthetic benchmark (source=synthetic)


@dataclass
class BackboneConfig:
    """A backbone from the registry (``ekd.models.create_backbone``)."""

    name: str = MISSING  # registry name: mobilefacenet, mbf, iresnet18, iresnet50, timm/<model>, ...
    label: str = ""  # display name in tables; the registry name when empty
    embedding_size: int = 512
    kwargs: dict[str, Any] = field(default_factory=dict)  # factory options (width, dropout, ...)
    checkpoint: Optional[str] = None  # teacher: backbone state_dict (insightface backbone.pth layout)


@dataclass
class HeadConfig:
    """The student's recognition head (``ekd.heads.create``)."""

    name: str = MISSING  # softmax, normface, sphereface, cosface, arcface, combined
    kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {s: 64, m: 0.5}
    sharded: bool = False  # class centres split over ranks (partial-FC style)
    sample_rate: float = 1.0  # fraction of negative class centres sampled per step (sharded head)


@dataclass
class DistillConfig:
    """Distillation objectives; ``method: none`` (no objectives) trains with the recognition loss only."""

    method: str = "none"  # label of the row in tables: none, kd, rkd, ekd, kd_rkd, ...
    objectives: dict[str, Any] = field(default_factory=dict)  # name -> {weight: w, **hparams}
    teacher_centres: str = "auto"
    prototype_cache: Optional[str] = None
    # folder written by ``ekd-cache build`` (same teacher file and training set): the teacher's embeddings
    # are read from it instead of computed, unless an objective needs its stage feature maps
    teacher_cache: Optional[str] = None
    teacher_logit_scale: float = 64.0
    student_head_init: str = "none"
    save_teacher: bool = False


@dataclass
class TrainerConfig:
    """Arguments of ``pytorch_lightning.Trainer`` (``use_distributed_sampler`` is always False)."""

    accelerator: str = "auto"
    devices: Any = "auto"  # int, list of ids or "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    max_epochs: Optional[int] = None
    max_steps: int = -1
    fast_dev_run: Any = False  # bool or a number of batches
    limit_train_batches: Optional[float] = None
    limit_val_batches: Optional[float] = None
    val_check_interval: Optional[float] = None
    check_val_every_n_epoch: Optional[int] = 1
    num_sanity_val_steps: int = 0
    log_every_n_steps: int = 50
    accumulate_grad_batches: int = 1
    gradient_clip_val: Optional[float] = None
    deterministic: Any = False  # bool or "warn"
    benchmark: Optional[bool] = None
    sync_batchnorm: bool = False
    enable_model_summary: bool = True


@dataclass
class WandbConfig:
    enabled: bool = False
    project: str = "ekd"
    entity: Optional[str] = None
    # W&B mode used when the environment does not set WANDB_MODE: offline never needs a network;
    # ``wandb sync <run dir>`` uploads later.
    mode: str = "offline"
    group: Optional[str] = None  # None: the sweep directory's name (multirun) or the experiment name
    tags: list[str] = field(default_factory=list)  # added to the automatic method/student/teacher tags
    log_model: bool = False


@dataclass
class CsvLoggerConfig:
    enabled: bool = False


@dataclass
class TensorBoardConfig:
    enabled: bool = False


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    csv: CsvLoggerConfig = field(default_factory=CsvLoggerConfig)
    tensorboard: TensorBoardConfig = field(default_factory=TensorBoardConfig)


@dataclass
class CheckpointConfig:
    enabled: bool = True
    save_last: bool = True
    every_n_epochs: Optional[int] = 1
    every_n_train_steps: Optional[int] = None


@dataclass
class VerificationConfig:
    """Verification during training (``ekd.eval.VerificationCallback``)."""

    enabled: bool = True
    sets: Optional[list[str]] = None  # None: the datamodule's verification sets
    every_n_epochs: Optional[int] = 1
    every_n_steps: Optional[int] = None
    kwargs: dict[str, Any] = field(default_factory=dict)  # further callback options (batch size, ...)


@dataclass
class CallbacksConfig:
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    verification: VerificationConfig = field(default_factory=VerificationConfig)
    lr_monitor: bool = True
    progress_bar: ProgressBar = ProgressBar.rich


@dataclass
class EvalConfig:
    """Final evaluation after ``fit`` (the numbers written to results.json)."""

    enabled: bool = True
    sets: Optional[list[str]] = None  # None: the datamodule's verification sets
    batch_size: int = 128
    roc_points: int = 200  # points of each ROC curve stored in results.json (for the notebooks)
    # IJB-B/C 1:1 verification (ekd.eval.ijb) when set: the folder holding IJBB/ and IJBC/
    ijb_root: Optional[str] = None
    ijb_sets: list[str] = field(default_factory=lambda: ["IJBB", "IJBC"])


@dataclass
class BenchmarkConfig:
    """Inference throughput of the trained backbone (images/s, measured on the training device)."""

    enabled: bool = True
    batch_size: int = 64
    warmup: int = 2
    iterations: int = 5


@dataclass
class TrainConfig:
    """The whole ``ekd-train`` configuration (base of ``conf/train.yaml``)."""

    # row label in results tables: ``${distill.method}`` unless an experiment says otherwise ("teacher")
    method: str = "${distill.method}"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    student: BackboneConfig = field(default_factory=BackboneConfig)  # the network being trained
    teacher: Optional[BackboneConfig] = None  # required when distill.objectives is not empty
    head: HeadConfig = field(default_factory=HeadConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    # recognition loss only on the first rows of each batch (EKD: the general part); None = all rows
    recognition_rows: Optional[int] = None
    aux_losses: dict[str, Any] = field(default_factory=dict)  # e.g. {center: {weight: 0.01}}
    channels_last: bool = False
    nonfinite: Nonfinite = Nonfinite.stop
    # a directory that already holds results.json is refused unless this is true
    overwrite: bool = False
