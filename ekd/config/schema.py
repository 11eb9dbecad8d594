"""Typed schemas of the ``ekd-train`` configuration (Hydra structured configs).

``TrainConfig`` is the base of the primary config ``conf/train.yaml``: every YAML group file and every
command-line override is merged into it, so an unknown key (``trainer.max_epoch=3``) or a value of the
wrong type or outside a closed set (``data.sampler=ekdd``) fails at composition time with OmegaConf's
message naming the full key and the expected type / choices. Closed choices are the enums of
:mod:`ekd.choices` (declared once, also checked at run time by the parts that use them).

Each section is handed whole to the part it configures, which takes it under the same name:

- ``data`` -> ``hydra.utils.instantiate`` (its ``_target_``: ``ekd.data.FaceDataModule``);
- ``student``, ``teacher``, ``head``, ``distill``, ``optim``, ``schedule`` and the other keys named
  like a constructor argument -> the Lightning module (``ekd.lit.build_module``);
- ``trainer`` -> ``pytorch_lightning.Trainer`` (its ``_target_``);
- ``callbacks`` / ``logger`` -> one object per entry with a ``_target_`` (add EarlyStopping, a second
  ModelCheckpoint or another logger in YAML; an entry set to null is left out).

Free-form mappings are kept where the keys depend on a registry entry (backbone, head and objective
hyper-parameters) or on a third-party class (callbacks, loggers); those are checked by name when the
parts are built, before training starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional  # noqa: UP035  (OmegaConf resolves these annotations at runtime)

from omegaconf import MISSING

from ekd.choices import FlipMode, IJBProtocolName, Nonfinite, Sampler
from ekd.data.synthetic import SyntheticSettings
from ekd.lit.optim import OptimConfig, ScheduleConfig
from ekd.lit.sections import BackboneConfig, DistillConfig, HeadConfig

# OmegaConf 2.3 reads the annotations with ``typing.get_type_hints``; ``Optional[X]`` and ``dict``/``list``
# generics are what it understands (no ``X | None`` on Python 3.10), hence the older spelling below.
# ruff: noqa: UP007, UP045


@dataclass
class DataConfig:
    """Training data and verification sets: the arguments of ``ekd.data.FaceDataModule`` (+ ``seed``)."""

    _target_: str = "ekd.data.FaceDataModule"
    name: str = MISSING  # dataset label used in run names and tables: ms1mv2, synthetic, ...
    source: str = MISSING  # a data source of the registry (ekd.data.DATA_SOURCES): synthetic, rec, folder
    root: Optional[str] = None  # directory of the .rec/.idx/property (+ .bin) files, or an image folder
    val_sets: Optional[list[str]] = None  # verification sets; None = the datamodule's defaults
    sampler: Sampler = Sampler.random  # random, ekd (general + identity-balanced) or pk
    batch_size: int = 128  # per device, used by the random sampler
    general: int = 32  # EKD sampler: uniform images per device
    identities: int = 8  # EKD / PK samplers: identities per device
    images_per_identity: int = 4
    flip: bool = True
    num_workers: int = 2
    pin_memory: bool = True
    persistent_workers: bool = True
    # the synthetic benchmark's generator arguments (source=synthetic); fields left null are the ones
    # recorded with an existing benchmark in data.root, or the defaults (ekd.data.sources.SyntheticSource)
    synthetic: Optional[SyntheticSettings] = None
    source_options: dict[str, Any] = field(default_factory=dict)  # further options of a user's data source


@dataclass
class TrainerConfig:
    """Arguments of ``pytorch_lightning.Trainer``; the run adds ``logger``, ``callbacks``,
    ``default_root_dir`` and ``use_distributed_sampler=False`` (the datamodule's samplers shard)."""

    _target_: str = "pytorch_lightning.Trainer"
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
class EvalConfig:
    """Final evaluation after ``fit`` (the numbers written to results.json)."""

    enabled: bool = True
    sets: Optional[list[str]] = None  # None: the datamodule's verification sets
    batch_size: int = 128
    roc_points: int = 200  # points of each ROC curve stored in results.json (for the notebooks)
    # embedding arithmetic of every set: 32-true (fp32), 16-mixed or bf16-mixed (autocast); checked by
    # ekd.config.check_config (a string: OmegaConf would match enum names, not these values)
    precision: str = "32-true"
    # IJB-B/C 1:1 verification (ekd.eval.ijb) when set: the folder holding IJBB/ and IJBC/
    ijb_root: Optional[str] = None
    ijb_sets: list[str] = field(default_factory=lambda: ["IJBB", "IJBC"])
    # scoring protocol (docs/methods.md): insightface (flip sum, norm + detector weighting) or tface
    # (plain view, neither weighting); the three settings below, when not null, replace the preset's
    ijb_protocol: IJBProtocolName = IJBProtocolName.insightface
    ijb_flip: Optional[FlipMode] = None  # sum, plain, sum_normalised, concat_normalised
    ijb_norm_score: Optional[bool] = None
    ijb_detector_score: Optional[bool] = None


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

    # the table row: the method's unless an experiment says otherwise (the "teacher" row). The student,
    # teacher, head and distill sections are ekd.lit.sections' dataclasses, what the modules take.
    method: str = "${distill.method}"
    label: str = "${distill.label}"
    order: float = "${distill.order}"  # type: ignore[assignment]  # an interpolation, resolved to a float
    paper_row: Optional[str] = "${distill.paper_row}"
    seed: int = 0
    # the training data's own seed (batch order, flips); null: ``seed``. Variance studies set it to tell
    # the spread due to the data order from the one due to the initialisation (``seed`` alone then)
    data_seed: Optional[int] = None
    # modules imported before anything is built: a user's objectives, backbones or data sources register
    # themselves on import (installed packages can use the ``ekd.plugins`` entry-point group instead)
    imports: list[str] = field(default_factory=list)
    # set by the run, read by callbacks and loggers through ${output_dir} / ${run_group}
    output_dir: Optional[str] = None
    run_group: Optional[str] = None  # the sweep directory's name (multirun) or the experiment's
    data: DataConfig = field(default_factory=DataConfig)
    student: BackboneConfig = field(default_factory=BackboneConfig)  # the network being trained
    teacher: Optional[BackboneConfig] = None  # required when distill.objectives is not empty
    head: HeadConfig = field(default_factory=HeadConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    # name -> {_target_: <class>, **arguments}; null entries are left out (conf/logger, conf/callbacks)
    logger: dict[str, Any] = field(default_factory=dict)
    callbacks: dict[str, Any] = field(default_factory=dict)
    eval: EvalConfig = field(default_factory=EvalConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    # recognition loss only on the first rows of each batch (EKD: the general part); None = all rows
    recognition_rows: Optional[int] = None
    aux_losses: dict[str, Any] = field(default_factory=dict)  # e.g. {center: {weight: 0.01}}
    channels_last: bool = False
    nonfinite: Nonfinite = Nonfinite.stop
    # continue a run: "auto" (hydra.run.dir's checkpoints/last.ckpt; a fresh start when there is none;
    # implied in a SLURM job that was requeued) or the path of a checkpoint file; docs/reliability.md
    resume: Optional[str] = None
    # resume from a checkpoint that torch.load(weights_only=True) cannot read (one written before the
    # hparams fix of 2026-12-01 pickled the Hydra config): unpickles anything, so only for your own files
    trust_pickle: bool = False
    # a folder that holds another run (finished or interrupted) is refused unless this is true; its run
    # files are then removed first
    overwrite: bool = False
