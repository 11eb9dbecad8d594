"""``ekd-train``: train a teacher, a no-KD student or a distilled student from a Hydra config.

    ekd-train experiment=synthetic/mobilefacenet/ekd
    ekd-train experiment=ms1mv2/mobilefacenet/ekd data.root=/data/ms1mv2 teacher.checkpoint=/t/last.ckpt
    ekd-train -m experiment=synthetic/mobilefacenet/kd distill=kd,rkd,ekd teacher.checkpoint=T seed=0,1,2
    ekd-train --cfg job experiment=...        # print the composed config and stop

The config is ``conf/train.yaml`` typed by :class:`ekd.config.TrainConfig`; experiments live in the
top-level ``experiments/`` folder (see :func:`ekd.config.register_experiments`).

What a run does (:func:`run`, shared with ``ekd-demo``):

1. refuses an output directory that already holds ``results.json`` (unless ``overwrite=true``) and
   writes the resolved config there (``config.yaml``; Hydra's own copies are in ``.hydra/``);
2. builds the datamodule (``ekd.data.FaceDataModule``), the module (``RecognitionModule`` when
   ``distill.objectives`` is empty, else ``DistillationModule``), the loggers (W&B offline by
   default, CSV, TensorBoard), the callbacks (last checkpoint, verification, lr monitor, progress
   bar) and the Trainer (``use_distributed_sampler=False``: the datamodule's samplers shard batches
   themselves);
3. fits, then on rank zero evaluates the trained backbone on every verification set, counts its
   parameters and MACs, measures its inference throughput, saves ``backbone.pth`` (a plain backbone
   state_dict, insightface layout) and writes ``results.json`` (:mod:`ekd.report.results`);
4. logs the summary metrics and a per-set ``wandb.Table`` to W&B, finishes the W&B run (so multirun
   jobs never share one) and prints the ``wandb sync`` command of an offline run.

The Hydra task returns the mean verification accuracy, the objective of ``hparams_search=optuna``.
"""

from __future__ import annotations

import datetime as _datetime
import math
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ekd.config import CONF_DIR, REPO_ROOT, ConfigError, register_configs, validate_config

# Hydra composes the config inside ``main``; the ConfigStore entries must exist before that.
register_configs()

RESOLVED_CONFIG = "config.yaml"
BACKBONE_FILE = "backbone.pth"


# ------------------------------------------------------------------------------------------ helpers


def _container(node: Any) -> Any:
    """Plain Python containers (enums as their names) from an OmegaConf node; other values unchanged."""
    if OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    return node


def _enum_value(value: Any) -> Any:
    return getattr(value, "value", value)


def uses_teacher(cfg: DictConfig) -> bool:
    """True when the run distills (``distill.objectives`` is not empty)."""
    return bool(cfg.distill.objectives)


def check_config(cfg: DictConfig) -> None:
    """Fail early, naming the key, on unknown keys, missing mandatory values and inconsistent choices."""
    validate_config(cfg)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if not uses_teacher(cfg):
        missing = [key for key in missing if not key.startswith("teacher.")]
    if missing:
        hints = ", ".join(f"{key}=..." for key in missing)
        raise ConfigError(
            f"missing mandatory values: {', '.join(missing)}; give them on the command line ({hints})"
        )
    if uses_teacher(cfg) and cfg.teacher is None:
        raise ConfigError(
            f"distill={cfg.distill.method} has objectives {sorted(cfg.distill.objectives)} but no teacher is "
            "configured: add teacher=<name> (conf/teacher) and teacher.checkpoint=<file>"
        )
    if uses_teacher(cfg) and not cfg.teacher.checkpoint:
        raise ConfigError(
            f"teacher.checkpoint is not set: distill={cfg.distill.method} needs the trained weights of the "
            f"{cfg.teacher.name} teacher (teacher.checkpoint=<backbone.pth or last.ckpt>)"
        )
    if _enum_value(cfg.data.source) != "synthetic" and not cfg.data.root:
        raise ConfigError(
            f"data.root is not set: data={cfg.data.name} reads {_enum_value(cfg.data.source)} data from a "
            "directory (data.root=<directory>; see the layout in conf/data/)"
        )
    for key, spec in cfg.distill.objectives.items():
        if not OmegaConf.is_dict(spec):
            raise ConfigError(
                f"distill.objectives.{key} must be a mapping {{weight: w, <hyper-parameters>}}, got {spec!r}"
            )


def git_commit(root: Path = REPO_ROOT) -> str | None:
    """``git rev-parse HEAD`` of the source tree (``+dirty`` with local changes), None outside git."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit


def _versions() -> dict[str, str]:
    import pytorch_lightning
    import torch

    import ekd

    return {
        "ekd": ekd.__version__,
        "torch": torch.__version__,
        "pytorch_lightning": pytorch_lightning.__version__,
        "python": sys.version.split()[0],
    }


# ------------------------------------------------------------------------------------------ builders


def build_datamodule(cfg: DictConfig) -> Any:
    """``ekd.data.FaceDataModule`` from ``cfg.data`` and the run's seed."""
    from ekd.data import FaceDataModule

    data = _container(cfg.data)
    return FaceDataModule(
        source=data["source"],
        root=data["root"],
        val_sets=data["val_sets"],
        sampler=data["sampler"],
        batch_size=data["batch_size"],
        general=data["general"],
        identities=data["identities"],
        images_per_identity=data["images_per_identity"],
        flip=data["flip"],
        num_workers=data["num_workers"],
        pin_memory=data["pin_memory"],
        persistent_workers=data["persistent_workers"] and data["num_workers"] > 0,
        seed=cfg.seed,
        synthetic=data["synthetic"],
    )


def module_kwargs(cfg: DictConfig, num_classes: int) -> dict[str, Any]:
    """Arguments shared by RecognitionModule and DistillationModule."""
    return {
        "backbone": cfg.student.name,
        "num_classes": int(num_classes),
        "backbone_kwargs": _container(cfg.student.kwargs),
        "embedding_size": cfg.student.embedding_size,
        "head": cfg.head.name,
        "head_kwargs": _container(cfg.head.kwargs),
        "sharded_head": cfg.head.sharded,
        "sample_rate": cfg.head.sample_rate,
        "aux_losses": _container(cfg.aux_losses) or None,
        "recognition_rows": cfg.recognition_rows,
        "optim": _container(cfg.optim),
        "schedule": _container(cfg.schedule),
        "channels_last": cfg.channels_last,
        "nonfinite": _enum_value(cfg.nonfinite),
    }


def layout_rows(layout: Mapping[str, int] | list[int] | None) -> list[int] | None:
    """Row counts of the batch parts in batch order (the datamodule gives {"general": G, "balanced": B})."""
    if layout is None:
        return None
    if isinstance(layout, Mapping):
        return [int(n) for n in layout.values()]  # insertion order = row order (general rows first)
    return [int(n) for n in layout]


def build_module(
    cfg: DictConfig, num_classes: int, batch_layout: Mapping[str, int] | list[int] | None = None
) -> Any:
    """RecognitionModule without distillation objectives, DistillationModule with them."""
    kwargs = module_kwargs(cfg, num_classes)
    if not uses_teacher(cfg):
        from ekd.lit.recognition import RecognitionModule

        return RecognitionModule(**kwargs)
    from ekd.lit.distillation import DistillationModule

    teacher_kwargs = dict(_container(cfg.teacher.kwargs))
    teacher_kwargs.setdefault("embedding_size", cfg.teacher.embedding_size)
    return DistillationModule(
        **kwargs,
        teacher=cfg.teacher.name,
        teacher_checkpoint=cfg.teacher.checkpoint,
        teacher_kwargs=teacher_kwargs,
        objectives=_container(cfg.distill.objectives),
        teacher_centres=cfg.distill.teacher_centres,
        prototype_cache=cfg.distill.prototype_cache,
        teacher_cache=cfg.distill.teacher_cache,
        teacher_logit_scale=cfg.distill.teacher_logit_scale,
        student_head_init=cfg.distill.student_head_init,
        batch_layout=layout_rows(batch_layout),
        save_teacher=cfg.distill.save_teacher,
    )


def run_tags(cfg: DictConfig) -> list[str]:
    """W&B tags: method, student and teacher (plus the configured extra tags)."""
    tags = [f"method:{cfg.method}", f"student:{cfg.student.name}", f"data:{cfg.data.name}"]
    if uses_teacher(cfg):
        tags.append(f"teacher:{cfg.teacher.name}")
    return tags + list(cfg.logger.wandb.tags)


def run_name(cfg: DictConfig) -> str:
    return f"{cfg.method}-{cfg.student.name}-{cfg.data.name}-s{cfg.seed}"


def build_loggers(cfg: DictConfig, output_dir: Path, group: str | None) -> list[Any]:
    """W&B (offline unless WANDB_MODE is set), CSV and TensorBoard loggers as configured."""
    from pytorch_lightning import loggers

    result: list[Any] = []
    wandb_cfg = cfg.logger.wandb
    if wandb_cfg.enabled:
        # respect the user's WANDB_MODE; otherwise never touch the network
        os.environ.setdefault("WANDB_MODE", wandb_cfg.mode)
        result.append(
            loggers.WandbLogger(
                project=wandb_cfg.project,
                entity=wandb_cfg.entity,
                group=wandb_cfg.group or group,
                tags=run_tags(cfg),
                name=run_name(cfg),
                save_dir=str(output_dir),
                log_model=wandb_cfg.log_model,
                job_type="train",
                config=_container(cfg),
            )
        )
    if cfg.logger.csv.enabled:
        result.append(loggers.CSVLogger(save_dir=str(output_dir), name="csv", version=""))
    if cfg.logger.tensorboard.enabled:
        result.append(loggers.TensorBoardLogger(save_dir=str(output_dir), name="tensorboard", version=""))
    return result


def build_callbacks(cfg: DictConfig, output_dir: Path, has_logger: bool) -> list[Any]:
    """Last checkpoint, verification, lr monitor and progress bar as configured."""
    from pytorch_lightning import callbacks

    from ekd.eval.callback import VerificationCallback

    result: list[Any] = []
    checkpoint = cfg.callbacks.checkpoint
    if checkpoint.enabled:
        result.append(
            callbacks.ModelCheckpoint(
                dirpath=str(output_dir / "checkpoints"),
                save_last=checkpoint.save_last,
                save_top_k=0 if checkpoint.save_last else 1,
                every_n_epochs=checkpoint.every_n_epochs,
                every_n_train_steps=checkpoint.every_n_train_steps,
            )
        )
    verification = cfg.callbacks.verification
    if verification.enabled:
        result.append(
            VerificationCallback(
                sets=None,  # the datamodule's verification sets (restricted below if configured)
                every_n_steps=verification.every_n_steps,
                every_n_epochs=verification.every_n_epochs,
                **_container(verification.kwargs),
            )
        )
    if cfg.callbacks.lr_monitor and has_logger:  # Lightning refuses an lr monitor without a logger
        result.append(callbacks.LearningRateMonitor(logging_interval="step"))
    bar = _enum_value(cfg.callbacks.progress_bar)
    if bar == "rich":
        result.append(callbacks.RichProgressBar())
    elif bar == "tqdm":
        result.append(callbacks.TQDMProgressBar())
    return result


def build_trainer(cfg: DictConfig, output_dir: Path, loggers: list[Any], callbacks: list[Any]) -> Any:
    """``pytorch_lightning.Trainer`` from ``cfg.trainer`` (None values keep Lightning's defaults)."""
    import pytorch_lightning as pl

    options = {key: value for key, value in _container(cfg.trainer).items() if value is not None}
    return pl.Trainer(
        **options,
        default_root_dir=str(output_dir),
        logger=loggers if loggers else False,
        callbacks=callbacks,
        enable_checkpointing=cfg.callbacks.checkpoint.enabled,
        enable_progress_bar=_enum_value(cfg.callbacks.progress_bar) != "none",
        use_distributed_sampler=False,
    )


# ------------------------------------------------------------------------------------------ measuring


def _eval_device(cfg: DictConfig) -> Any:
    import torch

    accelerator = str(cfg.trainer.accelerator)
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def evaluate_backbone(
    backbone: Any, sets: Mapping[str, tuple[Any, Any]], batch_size: int, roc_points: int
) -> tuple[dict[str, dict], dict[str, dict]]:
    """Verification metrics (``VerificationResult.to_dict()``) and down-sampled ROC curves per set."""
    from ekd.eval import extract_embeddings, verify
    from ekd.report import downsample_roc

    metrics: dict[str, dict] = {}
    rocs: dict[str, dict] = {}
    for name, (images, issame) in sets.items():
        embedded = extract_embeddings(backbone, images, batch_size=batch_size, flip=True)
        if not bool(embedded.embeddings.isfinite().all()):
            # a diverged network: recorded (and reported by ekd-table as a missing cell), not fatal, so
            # that the other jobs of a sweep still get their results
            warnings.warn(
                f"verification set {name}: the backbone produces non-finite embeddings", stacklevel=2
            )
            metrics[name] = {"accuracy": None, "error": "non-finite embeddings"}
            continue
        result = verify(embedded.embeddings, issame, xnorm=embedded.xnorm)
        metrics[name] = result.to_dict()
        rocs[name] = downsample_roc(result.roc_fpr, result.roc_tpr, roc_points)
    return metrics, rocs


def evaluate_ijb_sets(backbone: Any, cfg: DictConfig) -> tuple[dict[str, dict], dict[str, dict]]:
    """IJB-B/C 1:1 template verification of ``backbone`` (``ekd.eval.ijb``) on ``cfg.eval.ijb_sets``."""
    from ekd.eval.ijb import evaluate_ijb
    from ekd.report import downsample_roc

    metrics: dict[str, dict] = {}
    rocs: dict[str, dict] = {}
    for name in cfg.eval.ijb_sets:
        result = evaluate_ijb(backbone, cfg.eval.ijb_root, name=str(name), batch_size=cfg.eval.batch_size)
        metrics[str(name).lower()] = result.to_dict()
        rocs[str(name).lower()] = downsample_roc(result.roc_fpr, result.roc_tpr, cfg.eval.roc_points)
    return metrics, rocs


def measure_throughput(backbone: Any, batch_size: int, warmup: int, iterations: int) -> dict[str, Any]:
    """Inference images/s of ``backbone`` (eval mode, no gradients) on random inputs of its input size."""
    import torch

    parameters = list(backbone.parameters())
    device = parameters[0].device if parameters else torch.device("cpu")
    height, width = getattr(backbone, "input_size", (112, 112))
    images = torch.randn(batch_size, 3, height, width, device=device)
    was_training = backbone.training
    backbone.eval()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    try:
        with torch.no_grad():
            for _ in range(warmup):
                backbone(images)
            sync()
            start = time.perf_counter()
            for _ in range(iterations):
                backbone(images)
            sync()
            elapsed = time.perf_counter() - start
    finally:
        backbone.train(was_training)
    return {
        "images_per_s": batch_size * iterations / elapsed if elapsed > 0 else None,
        "batch_size": batch_size,
        "iterations": iterations,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }


# ------------------------------------------------------------------------------------------ the run


def _select_sets(available: Mapping[str, Any], wanted: list[str] | None, key: str) -> dict[str, Any]:
    if wanted is None:
        return dict(available)
    unknown = [name for name in wanted if name not in available]
    if unknown:
        raise ConfigError(
            f"{key}: unknown verification sets {unknown}; the data provides {sorted(available)}"
        )
    return {name: available[name] for name in wanted}


def _teacher_sha256(cfg: DictConfig) -> str | None:
    if not uses_teacher(cfg):
        return None
    from ekd.models import file_sha256

    return file_sha256(cfg.teacher.checkpoint)


def _teacher_cache_record(cfg: DictConfig, module: Any, trainer: Any) -> dict[str, Any] | None:
    """``{"path", "used"}`` of a configured ``distill.teacher_cache`` (None without one).

    ``used``: the teacher embeddings came from the cache (False: the teacher ran online, a log line
    said why); None when the fit ran in spawned processes (ddp_spawn), whose module this one is not.
    """
    if not uses_teacher(cfg) or not cfg.distill.teacher_cache:
        return None
    spawned = type(getattr(trainer.strategy, "launcher", None)).__name__ == "_MultiProcessingLauncher"
    used = None if spawned else bool(getattr(module, "cache_active", False))
    return {"path": str(Path(cfg.distill.teacher_cache).resolve()), "used": used}


def _wandb_summary(metrics: Mapping[str, dict], results: Mapping[str, Any]) -> None:
    """Summary metrics per benchmark and a per-set ``wandb.Table`` in the active W&B run."""
    import wandb

    run = wandb.run
    if run is None:
        return
    fprs = sorted({key for values in metrics.values() for key in (values.get("tpr_at_fpr") or {})})
    rows = []
    for name, values in metrics.items():
        run.summary[f"final/{name}/acc"] = values.get("accuracy")
        run.summary[f"final/{name}/acc_std"] = values.get("accuracy_std")
        for fpr in fprs:
            tpr = (values.get("tpr_at_fpr") or {}).get(fpr)
            if tpr is not None:
                run.summary[f"final/{name}/tpr@fpr={fpr}"] = tpr
        tprs = [(values.get("tpr_at_fpr") or {}).get(fpr) for fpr in fprs]
        rows.append(
            [
                results["method"],
                results["student"],
                name,
                values.get("accuracy"),
                values.get("accuracy_std"),
                *tprs,
            ]
        )
    run.summary["final/mean_acc"] = results.get("mean_accuracy")
    run.summary["params"] = results.get("params")
    run.summary["macs"] = results.get("macs")
    run.summary["throughput_images_per_s"] = (results.get("throughput") or {}).get("images_per_s")
    columns = ["method", "student", "set", "accuracy", "accuracy_std", *(f"tpr@fpr={f}" for f in fprs)]
    run.log({"final/verification": wandb.Table(columns=columns, data=rows)})


def _finish_wandb(loggers: list[Any]) -> None:
    """Close the W&B run (a multirun's next job must start its own) and print how to upload it."""
    if not any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        return
    from ekd.report.wandb_runs import finish_wandb_run

    finish_wandb_run()


def run(
    cfg: DictConfig,
    output_dir: str | os.PathLike,
    experiment: str | None = None,
    sweep: str | None = None,
) -> dict[str, Any]:
    """Train, evaluate and write ``results.json`` into ``output_dir``; return the results (rank 0).

    Other ranks of a DDP job return an empty dict after ``fit``.
    """
    import pytorch_lightning as pl
    import torch

    from ekd.models import count_macs, count_parameters
    from ekd.report import check_unfinished, write_results

    started = time.time()
    output_dir = Path(output_dir)
    check_unfinished(output_dir, overwrite=cfg.overwrite)
    check_config(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / RESOLVED_CONFIG).write_text(OmegaConf.to_yaml(cfg, resolve=True))

    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule.num_classes, getattr(datamodule, "batch_layout", None))
    group = cfg.logger.wandb.group or sweep or experiment
    loggers = build_loggers(cfg, output_dir, group)
    callbacks = build_callbacks(cfg, output_dir, has_logger=bool(loggers))
    verification = next((c for c in callbacks if type(c).__name__ == "VerificationCallback"), None)
    if verification is not None and cfg.callbacks.verification.sets is not None:
        verification.sets = _select_sets(
            datamodule.verification_sets(),
            list(cfg.callbacks.verification.sets),
            "callbacks.verification.sets",
        )
    trainer = build_trainer(cfg, output_dir, loggers, callbacks)
    try:
        fit_start = time.time()
        trainer.fit(module, datamodule=datamodule)
        fit_seconds = time.time() - fit_start
        if trainer.global_rank != 0:
            return {}

        backbone = module.student
        device = _eval_device(cfg)
        backbone.to(device)
        metrics: dict[str, dict] = {}
        rocs: dict[str, dict] = {}
        if cfg.eval.enabled:
            sets = _select_sets(
                datamodule.verification_sets(),
                None if cfg.eval.sets is None else list(cfg.eval.sets),
                "eval.sets",
            )
            metrics, rocs = evaluate_backbone(backbone, sets, cfg.eval.batch_size, cfg.eval.roc_points)
            if cfg.eval.ijb_root:
                metrics_ijb, rocs_ijb = evaluate_ijb_sets(backbone, cfg)
                metrics.update(metrics_ijb)
                rocs.update(rocs_ijb)
        # the mean over the pair-verification sets (IJB entries have no accuracy)
        accuracies = [m["accuracy"] for m in metrics.values() if m.get("accuracy") is not None]
        throughput = None
        if cfg.benchmark.enabled:
            throughput = measure_throughput(
                backbone, cfg.benchmark.batch_size, cfg.benchmark.warmup, cfg.benchmark.iterations
            )
        torch.save(
            {k: v.detach().cpu() for k, v in backbone.state_dict().items()}, output_dir / BACKBONE_FILE
        )

        last_checkpoint = output_dir / "checkpoints" / "last.ckpt"
        results: dict[str, Any] = {
            "method": cfg.method,
            "objectives": _container(cfg.distill.objectives),
            "dataset": cfg.data.name,
            "student": cfg.student.name,
            "student_label": cfg.student.label or cfg.student.name,
            "teacher": cfg.teacher.name if uses_teacher(cfg) else None,
            "teacher_checkpoint": str(cfg.teacher.checkpoint) if uses_teacher(cfg) else None,
            "teacher_sha256": _teacher_sha256(cfg),
            "teacher_cache": _teacher_cache_record(cfg, module, trainer),
            "seed": int(cfg.seed),
            "experiment": experiment,
            "sweep": sweep,
            "metrics": metrics,
            "mean_accuracy": sum(accuracies) / len(accuracies) if accuracies else None,
            "roc": rocs,
            "params": count_parameters(backbone),
            "macs": count_macs(backbone),
            "throughput": throughput,
            **_progress(trainer, last_checkpoint),
            "fit_time_s": fit_seconds,
            "wall_time_s": time.time() - started,
            "git_commit": git_commit(),
            "output_dir": str(output_dir.resolve()),
            # fast_dev_run and callbacks.checkpoint.enabled=false leave no checkpoint
            "checkpoint": str(last_checkpoint) if last_checkpoint.is_file() else None,
            "backbone_file": str(output_dir / BACKBONE_FILE),
            "created": _datetime.datetime.now(_datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": _versions(),
        }
        write_results(output_dir, results)
        if loggers:
            _wandb_summary(metrics, results)
        return results
    finally:
        _finish_wandb(loggers)


def _progress(trainer: Any, checkpoint: Path) -> dict[str, int]:
    """Optimizer steps and epochs of the fit. Under ddp_spawn the fit ran in child processes and the
    main process's trainer still reads 0, so the counters come from the last checkpoint then."""
    import torch

    progress = {"global_step": int(trainer.global_step), "epochs": int(trainer.current_epoch)}
    if progress["global_step"] == 0 and checkpoint.is_file():
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except Exception:  # an unreadable checkpoint leaves the counters as the trainer has them
            return progress
        progress = {"global_step": int(state.get("global_step", 0)), "epochs": int(state.get("epoch", 0))}
    return progress


def objective_value(results: Mapping[str, Any]) -> float | None:
    """What the Hydra task returns (the optuna sweeper maximises it): the mean verification accuracy."""
    value = results.get("mean_accuracy")
    return None if value is None or not math.isfinite(value) else float(value)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _hydra_task(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    sweep = Path(hydra_cfg.sweep.dir).name if hydra_cfg.mode == RunMode.MULTIRUN else None
    results = run(
        cfg,
        output_dir=hydra_cfg.runtime.output_dir,
        experiment=hydra_cfg.runtime.choices.get("experiment"),
        sweep=sweep,
    )
    return objective_value(results)


def main(argv: list[str] | None = None) -> None:
    """Console entry point; ``argv`` replaces the command-line arguments (Hydra reads ``sys.argv``)."""
    if argv is None:
        _hydra_task()
        return
    saved = sys.argv
    sys.argv = [saved[0] if saved else "ekd-train", *argv]
    try:
        _hydra_task()
    finally:
        sys.argv = saved


if __name__ == "__main__":
    main()
