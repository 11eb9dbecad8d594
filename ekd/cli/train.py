"""``ekd-train``: train a teacher, a no-KD student or a distilled student from a Hydra config.

    ekd-train experiment=synthetic/student distill=ekd teacher.checkpoint=T
    ekd-train experiment=ms1mv2/student student=resnet18 distill=ekd data.root=DIR teacher.checkpoint=T
    ekd-train -m experiment=synthetic/student distill=kd,rkd,ekd teacher.checkpoint=T seed=0,1,2
    ekd-train --cfg job experiment=...        # print the composed config and stop

The config is ``conf/train.yaml`` typed by :class:`ekd.config.TrainConfig`. :func:`run` (shared with
``ekd-demo``) builds every part from its config section, top to bottom:

1. refuses an output directory that already holds ``results.json`` (unless ``overwrite=true``),
   imports the modules of ``imports`` (user objectives, backbones, data sources) and writes the
   resolved config (``config.yaml``);
2. ``data`` -> the datamodule (``hydra.utils.instantiate``); the config's sections -> the Lightning
   module (:func:`ekd.lit.build_module`); ``logger.*`` and ``callbacks.*`` -> one object per entry with a
   ``_target_``; ``trainer`` -> the Trainer (``use_distributed_sampler=False``: the samplers shard);
3. fits, then on rank zero evaluates the trained backbone (:mod:`ekd.eval`), saves ``backbone.pth``
   (insightface layout) and writes ``results.json`` (:class:`ekd.report.RunResults`);
4. logs the summary to W&B and finishes the W&B run (so multirun jobs never share one). The Hydra
   task returns the mean verification accuracy, the objective of ``hparams_search=optuna``.
"""

from __future__ import annotations

import datetime as _datetime
import math
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ekd.config import (
    CONF_DIR,
    REPO_ROOT,
    ConfigError,
    check_config,
    instantiate_entries,
    register_configs,
    uses_teacher,
)

# Hydra composes the config inside ``main``; the ConfigStore entries must exist before that.
register_configs()

__all__ = ["ConfigError", "build_datamodule", "build_trainer", "main", "run"]
RESOLVED_CONFIG = "config.yaml"
BACKBONE_FILE = "backbone.pth"


def build_datamodule(cfg: DictConfig) -> Any:
    """``cfg.data`` (its ``_target_``: ``ekd.data.FaceDataModule``) with the run's seed."""
    return hydra.utils.instantiate(cfg.data, seed=cfg.seed, _convert_="object")


def build_trainer(cfg: DictConfig, output_dir: Path, loggers: list[Any], callbacks: list[Any]) -> Any:
    """``cfg.trainer`` (``_target_``: ``pytorch_lightning.Trainer``) with the run's loggers and callbacks."""
    from pytorch_lightning.callbacks import Checkpoint, ProgressBar

    return hydra.utils.instantiate(
        cfg.trainer,
        default_root_dir=str(output_dir),
        logger=loggers or False,
        callbacks=callbacks,
        enable_checkpointing=any(isinstance(c, Checkpoint) for c in callbacks),
        enable_progress_bar=any(isinstance(c, ProgressBar) for c in callbacks),
        use_distributed_sampler=False,
        _convert_="all",
    )


def run(
    cfg: DictConfig,
    output_dir: str | os.PathLike,
    experiment: str | None = None,
    sweep: str | None = None,
) -> Any:
    """Train, evaluate and write ``results.json`` into ``output_dir``; return the
    :class:`ekd.report.RunResults` on rank zero (None on the other ranks of a DDP job)."""
    import pytorch_lightning as pl
    import torch

    from ekd.eval import (
        evaluate_backbone,
        evaluate_ijb_sets,
        evaluation_device,
        measure_throughput,
        select_sets,
    )
    from ekd.lit import build_module
    from ekd.models import count_macs, count_parameters, file_sha256
    from ekd.plugins import import_modules
    from ekd.report import RunResults, check_unfinished, git_commit, library_versions, write_results
    from ekd.report.wandb_runs import finish_wandb_run, log_run_summary

    started = time.time()
    output_dir = Path(output_dir)
    check_unfinished(output_dir, overwrite=cfg.overwrite)
    import_modules(cfg.imports, source="imports")
    check_config(cfg)
    cfg.output_dir = str(output_dir)
    cfg.run_group = sweep or experiment
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / RESOLVED_CONFIG).write_text(OmegaConf.to_yaml(cfg, resolve=True))

    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, num_classes=datamodule.num_classes, batch_layout=datamodule.batch_layout)
    loggers = instantiate_entries(cfg.logger, "logger")
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    callbacks = instantiate_entries(cfg.callbacks, "callbacks")
    trainer = build_trainer(cfg, output_dir, loggers, callbacks)
    try:
        fit_start = time.time()
        trainer.fit(module, datamodule=datamodule)
        fit_seconds = time.time() - fit_start
        if trainer.global_rank != 0:
            return None

        backbone = module.student.to(evaluation_device(str(cfg.trainer.accelerator)))
        metrics: dict[str, dict] = {}
        rocs: dict[str, dict] = {}
        if cfg.eval.enabled:
            sets = select_sets(datamodule.verification_sets(), cfg.eval.sets, "eval.sets")
            metrics, rocs = evaluate_backbone(backbone, sets, cfg.eval.batch_size, cfg.eval.roc_points)
            if cfg.eval.ijb_root:
                ijb_metrics, ijb_rocs = evaluate_ijb_sets(
                    backbone, cfg.eval.ijb_root, cfg.eval.ijb_sets, cfg.eval.batch_size, cfg.eval.roc_points
                )
                metrics.update(ijb_metrics)
                rocs.update(ijb_rocs)
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
        distilled = uses_teacher(cfg)
        results = RunResults(
            method=cfg.method,
            label=cfg.label,
            order=cfg.order,
            paper_row=cfg.paper_row,
            objectives=OmegaConf.to_container(cfg.distill.objectives, resolve=True),
            dataset=cfg.data.name,
            student=cfg.student.name,
            student_label=cfg.student.label or cfg.student.name,
            teacher=cfg.teacher.name if distilled else None,
            teacher_checkpoint=str(cfg.teacher.checkpoint) if distilled else None,
            teacher_sha256=file_sha256(cfg.teacher.checkpoint) if distilled else None,
            teacher_cache=teacher_cache_record(cfg, datamodule),
            seed=int(cfg.seed),
            experiment=experiment,
            sweep=sweep,
            metrics=metrics,
            mean_accuracy=sum(accuracies) / len(accuracies) if accuracies else None,
            roc=rocs,
            params=count_parameters(backbone),
            macs=count_macs(backbone),
            throughput=throughput,
            **fit_progress(trainer, last_checkpoint),
            fit_time_s=fit_seconds,
            wall_time_s=time.time() - started,
            git_commit=git_commit(REPO_ROOT),
            output_dir=str(output_dir.resolve()),
            # fast_dev_run and runs without a ModelCheckpoint leave no checkpoint
            checkpoint=str(last_checkpoint) if last_checkpoint.is_file() else None,
            backbone_file=str(output_dir / BACKBONE_FILE),
            created=_datetime.datetime.now(_datetime.timezone.utc).isoformat(timespec="seconds"),
            versions=library_versions(),
        )
        write_results(output_dir, results)
        log_run_summary(results)
        return results
    finally:
        finish_wandb_run()


def teacher_cache_record(cfg: DictConfig, datamodule: Any) -> dict[str, Any] | None:
    """``{"path", "used"}`` of a configured ``distill.teacher_cache`` (None without one).

    ``used``: the teacher embeddings came from the cache (False: the teacher ran online, a log line
    said why); None when the fit ran in spawned processes (ddp_spawn), so that this process's
    datamodule was never set up.
    """
    if not uses_teacher(cfg) or not cfg.distill.teacher_cache:
        return None
    return {"path": str(Path(cfg.distill.teacher_cache).resolve()), "used": datamodule.teacher_cache_active}


def fit_progress(trainer: Any, checkpoint: Path) -> dict[str, int]:
    """Optimizer steps and epochs of the fit. Under ddp_spawn the fit ran in child processes and the
    main process's trainer still reads 0, so the counters come from the last checkpoint then."""
    from ekd.models.loading import read_checkpoint

    progress = {"global_step": int(trainer.global_step), "epochs": int(trainer.current_epoch)}
    if progress["global_step"] == 0 and checkpoint.is_file():
        state = read_checkpoint(checkpoint)
        progress = {"global_step": int(state.get("global_step", 0)), "epochs": int(state.get("epoch", 0))}
    return progress


def objective_value(results: Any) -> float | None:
    """What the Hydra task returns (the optuna sweeper maximises it): the mean verification accuracy."""
    value = None if results is None else results.mean_accuracy
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


def main(argv: Iterable[str] | None = None) -> None:
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
