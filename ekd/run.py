"""One training run, from a composed config to ``results.json`` (what ``ekd-train`` and ``ekd-demo`` call).

:func:`run` builds every part from its config section, top to bottom, and guards the run folder:

1. imports the modules of ``imports`` (user objectives, backbones, data sources) and checks the config;
2. decides how the run starts in its folder (``ekd.runs.prepare_run_folder``: one run per folder, a
   lock, ``resume=auto`` / ``resume=<file>`` with the same config) and writes ``config.yaml``;
3. ``data`` -> the datamodule (``hydra.utils.instantiate``), whose training files and verification
   sets are read before anything trains; the config's sections -> the Lightning module
   (:func:`ekd.lit.build_module`); ``logger.*`` and ``callbacks.*`` -> one object per entry with a
   ``_target_``; ``trainer`` -> the Trainer (``use_distributed_sampler=False``: the samplers shard);
4. fits (from the checkpoint when resuming). A signal stops it at a step boundary with a checkpoint
   (:class:`RunInterrupted`); an exception writes a ``results.json`` with status "failed" and the reason;
5. on rank zero evaluates the trained backbone (:mod:`ekd.eval`), saves ``backbone.pth`` (insightface
   layout, with ``backbone.json`` naming its architecture) and writes ``results.json``
   (:class:`ekd.report.RunResults`), logs the summary to W&B and finishes the W&B run;
6. frees the run's objects (a cycle-collector pass), so that a process running several runs does not
   accumulate them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import signal
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from ekd.config import REPO_ROOT, ConfigError, check_config, instantiate_entries, uses_teacher
from ekd.runs import BACKBONE_FILE, LAST_CHECKPOINT


def build_datamodule(cfg: DictConfig) -> Any:
    """``cfg.data`` (its ``_target_``: ``ekd.data.FaceDataModule``) with the run's data seed: ``data_seed``,
    or ``seed`` where that is null (configs saved before the key existed have neither: the seed)."""
    data_seed = cfg.get("data_seed")
    return hydra.utils.instantiate(
        cfg.data, seed=cfg.seed if data_seed is None else data_seed, _convert_="all"
    )


def build_trainer(cfg: DictConfig, output_dir: Path, loggers: list[Any], callbacks: list[Any]) -> Any:
    """``cfg.trainer`` (``_target_``: ``pytorch_lightning.Trainer``) with the run's loggers and callbacks,
    and :func:`null_profiler` (Lightning profiles nothing by default either, but pays for it)."""
    from pytorch_lightning.callbacks import Checkpoint, ProgressBar

    return hydra.utils.instantiate(
        cfg.trainer,
        default_root_dir=str(output_dir),
        logger=loggers or False,
        callbacks=callbacks,
        enable_checkpointing=any(isinstance(c, Checkpoint) for c in callbacks),
        enable_progress_bar=any(isinstance(c, ProgressBar) for c in callbacks),
        use_distributed_sampler=False,
        profiler=null_profiler(),
        _convert_="all",
    )


def null_profiler() -> Any:
    """The Trainer's profiler: :class:`ekd.lit.profiler.NullProfiler` (records nothing, cheaply)."""
    from ekd.lit.profiler import NullProfiler

    return NullProfiler()


class RunInterrupted(Exception):
    """A signal stopped the fit; ``checkpoints/last.ckpt`` holds its last step (``resume=auto``)."""

    def __init__(self, signum: int, checkpoint: Path) -> None:  # the checkpoint may be missing
        super().__init__(f"interrupted by signal {signum}; its last step is in {checkpoint}")
        self.signum, self.checkpoint = signum, checkpoint


def run(
    cfg: DictConfig,
    output_dir: str | os.PathLike,
    experiment: str | None = None,
    sweep: str | None = None,
    fixed_folder: bool = True,
) -> Any:
    """Train, evaluate and write ``results.json`` into ``output_dir``; return the
    :class:`ekd.report.RunResults` on rank zero (None on the other ranks of a DDP job).

    ``fixed_folder``: the user named ``output_dir`` (``resume=auto`` needs that). Raises
    :class:`RunInterrupted` when a signal stopped the fit (its checkpoint is saved).

    The run's objects are freed before it returns. They hold each other (Trainer, module,
    datamodule, callbacks), so only Python's cycle collector frees them, and in a process with many
    long-lived objects its full pass is rare: without the explicit pass, a process that runs several
    runs (``ekd-demo`` workers, a local multirun) kept every earlier run's verification sets (1.1 GB
    for the study's pooled sets) until it ran out of memory, and each run's peak memory counted them.
    """
    try:
        return _train_and_evaluate(cfg, output_dir, experiment, sweep, fixed_folder)
    finally:
        gc.collect()  # the run's frame is gone here: its cycles are garbage now


def _train_and_evaluate(
    cfg: DictConfig,
    output_dir: str | os.PathLike,
    experiment: str | None,
    sweep: str | None,
    fixed_folder: bool,
) -> Any:
    """The body of :func:`run` (which frees what it leaves behind)."""
    import pytorch_lightning as pl
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from ekd.dist import launch_rank
    from ekd.lit import build_module
    from ekd.lit.checkpoint import LastCheckpoint
    from ekd.plugins import import_modules
    from ekd.report import load_results
    from ekd.report.wandb_runs import finish_wandb_run
    from ekd.runs import CONFIG_FILE, prepare_run_folder

    started = time.time()
    output_dir = Path(output_dir)
    import_modules(cfg.imports, source="imports")
    check_config(cfg)
    cfg.output_dir = str(output_dir)
    cfg.run_group = sweep or experiment
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    rank = launch_rank()
    # a SLURM job that was requeued (time limit, preemption) continues where it stopped
    requeued = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0
    resume = cfg.resume or ("auto" if requeued else None)
    start = prepare_run_folder(output_dir, resolved, resume, cfg.overwrite, fixed_folder, rank)
    if start.finished:
        print(f"ekd-train: {output_dir} holds a finished run (resume=auto): nothing to do")
        return load_results(output_dir)
    try:
        # a resumed run keeps the config it started with (checked equal above)
        if rank == 0 and (start.ckpt_path is None or not (output_dir / CONFIG_FILE).exists()):
            (output_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(cfg, resolve=True))
        pl.seed_everything(cfg.seed, workers=True)
        datamodule = build_datamodule(cfg)
        if rank == 0:  # every input checked before the first step: training data, verification sets
            datamodule.prepare_data()
            datamodule.setup("fit")
            datamodule.verification_sets()
        module = build_module(cfg, num_classes=datamodule.num_classes, batch_layout=datamodule.batch_layout)
        loggers = instantiate_entries(cfg.logger, "logger")
        for logger in loggers:
            logger.log_hyperparams(resolved)
        callbacks = instantiate_entries(cfg.callbacks, "callbacks")
        trainer = build_trainer(cfg, output_dir, loggers, callbacks)
        from ekd.eval import evaluation_device
        from ekd.models.loading import allowed_checkpoint_classes
        from ekd.resources import peak_memory_mib, reset_peak_memory

        memory_device = evaluation_device(str(cfg.trainer.accelerator))
        memory_reset = reset_peak_memory(memory_device)
        # read before the fit: resume=auto continues from last.ckpt, which the fit then overwrites
        start_step = resumed_step(start.ckpt_path, trust_pickle=cfg.trust_pickle)
        fit_start = time.time()
        signalled = False
        try:
            # Lightning reads the checkpoint with weights_only=True: allow the hyper-parameter classes
            # of the module docstring of ekd.models.loading, or everything with trust_pickle=true
            trusted = start.ckpt_path is None or cfg.trust_pickle
            allowed = contextlib.nullcontext() if trusted else allowed_checkpoint_classes(start.ckpt_path)
            with allowed:
                trainer.fit(
                    module,
                    datamodule=datamodule,
                    ckpt_path=start.ckpt_path,
                    weights_only=False if cfg.trust_pickle else None,
                )
        except SIGTERMException:  # Lightning's end of a fit that received SIGTERM (a SystemExit)
            signalled = True
        except Exception as error:
            if rank == 0 and user_error(error) is None:
                write_failure(cfg, output_dir, error, experiment, sweep, started, trainer.global_step)
            raise
        stopped = next((c for c in callbacks if isinstance(c, LastCheckpoint) and c.interrupted), None)
        if stopped is not None or signalled:
            signum = int(stopped.interrupted) if stopped is not None else int(signal.SIGTERM)
            raise RunInterrupted(signum, output_dir / LAST_CHECKPOINT)
        if trainer.global_rank != 0:
            return None
        fit_cost = FitCost(
            fit_time_s=time.time() - fit_start,
            start_step=start_step,
            peak_memory_mib=peak_memory_mib(memory_device, memory_reset),
        )
        return finish_run(cfg, output_dir, module, datamodule, trainer, experiment, sweep, started, fit_cost)
    finally:
        finish_wandb_run()
        if start.lock is not None:
            start.lock.release()


def user_error(error: BaseException) -> BaseException | None:
    """The user error behind ``error`` (also when Hydra's instantiate wrapped it), or None: a bad config,
    file, folder, checkpoint, cache, plugin or name, found before training or at fit start. Such errors
    get one message and exit code 2 from ``ekd-train``, and no failure record."""
    from ekd.data.errors import DataError
    from ekd.distill.cache import TeacherCacheError
    from ekd.models.loading import CheckpointError
    from ekd.plugins import PluginError
    from ekd.registry import RegistryError
    from ekd.report import FinishedRunError
    from ekd.runs import RunFolderError

    user = (ConfigError, RunFolderError, DataError, CheckpointError, TeacherCacheError, PluginError)
    user += (RegistryError, FinishedRunError, FileNotFoundError)
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, user):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def finish_run(
    cfg: DictConfig,
    output_dir: Path,
    module: Any,
    datamodule: Any,
    trainer: Any,
    experiment: str | None,
    sweep: str | None,
    started: float,
    fit_cost: FitCost,
) -> Any:
    """Evaluate the trained backbone (``ekd.eval``), save ``backbone.pth`` and write ``results.json``."""
    import torch

    from ekd.data.templates import find_template_sets
    from ekd.eval import (
        config_ijb_protocol,
        evaluate_trained,
        evaluation_device,
        measure_throughput,
        protocol_record,
        select_eval_sets,
        template_protocol,
    )
    from ekd.models import count_macs, count_parameters, write_backbone_record
    from ekd.report import write_results
    from ekd.report.records import run_record
    from ekd.report.wandb_runs import log_run_summary

    results = run_record(cfg, output_dir, experiment, sweep, started, source_root=REPO_ROOT)
    results.fit_time_s = fit_cost.fit_time_s
    results.peak_memory_mib = fit_cost.peak_memory_mib
    results.data_record = data_record(datamodule)
    backbone = module.student.to(evaluation_device(str(cfg.trainer.accelerator)))
    if cfg.eval.enabled:
        # the pair sets and the template sets (synth_ijb.npz of the synthetic benchmark) in the data folder
        templates = find_template_sets(getattr(datamodule, "root", None))
        sets, templates = select_eval_sets(
            datamodule.verification_sets(), templates, cfg.eval.sets, "eval.sets"
        )
        ev = cfg.eval
        ijb = config_ijb_protocol(ev)
        tpl = template_protocol() if templates else None
        found = evaluate_trained(
            backbone,
            sets,
            ev.batch_size,
            ev.roc_points,
            ev.ijb_root,
            ev.ijb_sets,
            ijb_protocol=ijb,
            precision=ev.precision,
            template_sets=templates,
            template_protocol=tpl,
        )
        results.metrics, results.roc, results.mean_accuracy = found
        results.eval_protocol = protocol_record(ev.precision, ijb if ev.ijb_root else None, templates=tpl)
    if cfg.benchmark.enabled:
        bench = cfg.benchmark
        results.throughput = measure_throughput(backbone, bench.batch_size, bench.warmup, bench.iterations)
    torch.save({k: v.detach().cpu() for k, v in backbone.state_dict().items()}, output_dir / BACKBONE_FILE)
    student = cfg.student
    options = OmegaConf.to_container(student.kwargs, resolve=True)
    write_backbone_record(output_dir / BACKBONE_FILE, student.name, student.embedding_size, options)
    last_checkpoint = output_dir / LAST_CHECKPOINT
    results.teacher_cache = teacher_cache_record(cfg, datamodule)
    results.params, results.macs = count_parameters(backbone), count_macs(backbone)
    results.global_step, results.epochs = fit_progress(trainer, last_checkpoint)
    results.train_batch_size = train_batch_size(trainer, datamodule)
    if results.train_batch_size and fit_cost.fit_time_s > 0:
        trained = max(0, results.global_step - fit_cost.start_step) * results.train_batch_size
        results.train_images_per_s = trained / fit_cost.fit_time_s
    results.checkpoint = str(last_checkpoint) if last_checkpoint.is_file() else None
    results.backbone_file = str(output_dir / BACKBONE_FILE)
    results.wall_time_s = time.time() - started
    write_results(output_dir, results)
    log_run_summary(results)
    return results


def write_failure(
    cfg: DictConfig,
    output_dir: Path,
    error: BaseException,
    experiment: str | None,
    sweep: str | None,
    started: float,
    step: int | None = None,
) -> None:
    """``results.json`` of a run that stopped on an exception at ``step``: status "failed", the reason."""
    from ekd.report import write_results
    from ekd.report.records import run_record

    record = run_record(cfg, output_dir, experiment, sweep, started, source_root=REPO_ROOT)
    write_results(output_dir, record.as_failed(error, step=step))


def teacher_cache_record(cfg: DictConfig, datamodule: Any) -> dict[str, Any] | None:
    """``{"path", "used"}`` of a configured ``distill.teacher_cache`` (None without one).

    ``used``: the teacher embeddings came from the cache (False: the teacher ran online, a log line
    said why); None when the fit ran in spawned processes (ddp_spawn), so that this process's
    datamodule was never set up.
    """
    if not uses_teacher(cfg) or not cfg.distill.teacher_cache:
        return None
    return {"path": str(Path(cfg.distill.teacher_cache).resolve()), "used": datamodule.teacher_cache_active}


@dataclasses.dataclass(frozen=True)
class FitCost:
    """What ``run`` measured around ``Trainer.fit``: its duration, the step it resumed from (0 for a
    fresh run) and the peak memory during it (``ekd.resources``; None where it cannot be measured)."""

    fit_time_s: float
    start_step: int = 0
    peak_memory_mib: float | None = None


def resumed_step(checkpoint: str | os.PathLike | None, trust_pickle: bool = False) -> int:
    """The optimizer step stored in the checkpoint a fit resumes from (0 without one)."""
    if checkpoint is None:
        return 0
    from ekd.models.loading import read_checkpoint

    return int(read_checkpoint(Path(checkpoint), trust_pickle=trust_pickle).get("global_step", 0))


def train_batch_size(trainer: Any, datamodule: Any) -> int | None:
    """Training images per optimizer step over all processes and accumulated batches (None when the
    datamodule does not say its batch size)."""
    layout = getattr(datamodule, "batch_layout", None)
    rows = sum(layout.values()) if layout else getattr(datamodule, "batch_size", None)
    if not rows:
        return None
    return int(rows) * int(trainer.world_size) * int(trainer.accumulate_grad_batches)


def data_record(datamodule: Any) -> dict[str, Any] | None:
    """What defines the training and evaluation data, for ``ekd-table`` to keep runs on different data
    apart: the recorded arguments of a synthetic benchmark (``synthetic.json``: generator version and
    arguments); None for other data (its folder's contents are not summarised)."""
    from ekd.data.synthetic import read_synthetic_metadata

    root = getattr(datamodule, "root", None)
    if root is None:
        return None
    found = read_synthetic_metadata(root)
    return None if found is None else dict(found[1])


def fit_progress(trainer: Any, checkpoint: Path) -> tuple[int, int]:
    """Optimizer steps and epochs of the fit. Under ddp_spawn the fit ran in child processes and the
    main process's trainer still reads 0, so the counters come from the last checkpoint then."""
    from ekd.models.loading import read_checkpoint

    if trainer.global_step == 0 and checkpoint.is_file():
        state = read_checkpoint(checkpoint)
        return int(state.get("global_step", 0)), int(state.get("epoch", 0))
    return int(trainer.global_step), int(trainer.current_epoch)
