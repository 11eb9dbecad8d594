"""ekd-train's Lightning loop vs a hand-written PyTorch loop doing the same math, at a GPU-like step time.

The Lightning side is what ``ekd-train experiment=synthetic/student`` builds, through the same code:
the config composed by Hydra, the module from :func:`ekd.lit.build_module`, loggers and callbacks
from ``cfg.logger`` / ``cfg.callbacks`` (:func:`ekd.config.instantiate_entries`: W&B offline or CSV,
``LastCheckpoint``, ``VerificationCallback``, the progress callback) and the Trainer from
:func:`ekd.run.build_trainer`; ``nonfinite=stop`` and the recipe's ``log_every_n_steps`` (10). Only
the student and the batch are shrunk (``tiny_resnet18`` on 16 x 16 inputs, 8 + 2 x 4 rows) so that a
CPU step takes about 10 ms, as a MobileFaceNet step does on a GPU: the per-step framework cost is
then as large a share of the step as it is there.

The raw loop trains a second module built the same way (same seed: same weights) on the same
in-memory batches with the same math: the device batch transform (``normalise_batch``), the module's
``loss_terms`` (forward, head, metrics), the weighted sum, ``zero_grad``, ``backward``, the same
optimizer and lr schedule (``ekd.lit.optim``) and a loss read-back every ``log_every_n_steps``
steps (what a hand-written loop prints). No logger, callbacks, hooks or non-finite check.

Interleaving: the machine is shared, and load that changes between two runs of a few seconds moves a
ratio of separate runs by +-10 %. So the two loops alternate within one fit: after every ``--block``
Lightning steps (default 1: every step), the module's ``on_train_batch_end`` (the last hook of a
step; set on the instance, so no extra callback joins the loop) runs the raw loop's steps on the
same batches. Lightning's time is the span from the epoch's start to its last step's end less the
raw steps' time, so set-up and per-epoch work (the epoch-end verification and checkpoint) are left
out. A round is one such fit per variant; the ratio (raw time / Lightning time) of each round is
reported as the median and range over the rounds, for wall and for process CPU time.

Variants: ``ekd`` (the configuration above), ``bare`` (``pl.Trainer`` with its defaults and no
logger, callback or progress bar; the same module) and ``floor`` (``bare`` with the module's
``training_step`` replaced by the raw loop's math: Lightning's own per-step cost, which nothing in
ekd's module, callbacks or logger can remove).

    python bench/bench_lightning_loop.py [--rounds 7] [--steps 200] [--logger wandb|csv|none]
        [--variants ekd,bare,floor] [--block 1] [--threads 1] [--quick] [--markdown FILE] [OVERRIDE ...]

OVERRIDEs are Hydra overrides applied after the bench's own (e.g. ``trainer.log_every_n_steps=50``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from perf_common import emit, markdown_table

from ekd.data.batch import FaceBatch, normalise_batch

# the recipe of ekd-train experiment=synthetic/student, with a student and batch small enough for a
# ~10 ms CPU step (a GPU-like step time); everything else (head, optimizer, schedule, trainer, logger,
# callbacks, nonfinite) as ekd-train composes it
SHRINK = [
    "student=tiny_resnet18",
    "+student.kwargs.input_size=[16,16]",
    "data.general=8",
    "data.identities=2",
    "data.images_per_identity=4",
    "trainer.max_epochs=1",
]


def compose(logger: str, overrides: list[str]) -> Any:
    """The composed ``ekd-train experiment=synthetic/student`` config with the bench's overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from ekd.config import CONF_DIR, register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="bench"):
        return hydra_compose(
            config_name="train",
            overrides=["experiment=synthetic/student", *SHRINK, f"logger={logger}", *overrides],
        )


class Batches:
    """In-memory batches as a sized iterable (Lightning reads a plain list as a list of loaders)."""

    def __init__(self, batches: list[FaceBatch]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[FaceBatch]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def make_batches(cfg: Any, steps: int, size: tuple[int, int]) -> Batches:
    """``steps`` uint8 batches with labels and flips, as FaceDataModule's loader delivers them."""
    rows = int(cfg.data.general) + int(cfg.data.identities) * int(cfg.data.images_per_identity)
    classes = int(cfg.data.synthetic.identities)
    generator = torch.Generator().manual_seed(0)
    batches = [
        FaceBatch(
            images=torch.randint(0, 256, (rows, 3, *size), dtype=torch.uint8, generator=generator),
            labels=torch.randint(0, classes, (rows,), generator=generator),
            indices=torch.arange(rows),
            flipped=torch.rand(rows, generator=generator) < 0.5,
        )
        for _ in range(steps)
    ]
    return Batches(batches)


def new_module(cfg: Any) -> Any:
    """The training module exactly as ekd-train builds it (same seed for every variant: same weights)."""
    from ekd.lit import build_module

    torch.manual_seed(int(cfg.seed))
    return build_module(cfg, num_classes=int(cfg.data.synthetic.identities), batch_layout=None)


class RawLoop:
    """The same math by hand, one step at a time: device transform, loss terms, backward, SGD, lr
    schedule, and a loss read-back every ``log_every_n_steps`` steps (what a hand-written loop prints)."""

    def __init__(self, cfg: Any, steps: int) -> None:
        from ekd.lit.optim import (
            as_optim_config,
            as_schedule_config,
            build_optimizer,
            build_scheduler,
            param_groups,
        )

        self.module = new_module(cfg)
        optim = as_optim_config(self.module.hparams.optim)
        groups = param_groups(
            self.module.trainable_modules(), optim.weight_decay, optim.no_decay_norm_and_bias
        )
        self.optimizer = build_optimizer(groups, optim)
        schedule = as_schedule_config(self.module.hparams.schedule)
        self.scheduler = build_scheduler(self.optimizer, schedule, steps, steps)
        self.every = int(cfg.trainer.log_every_n_steps) or 1
        self.module.train()
        self.wall = self.cpu = 0.0
        self.steps = 0

    def step(self, batch: FaceBatch) -> None:
        start = (time.perf_counter(), time.process_time())
        images = normalise_batch(batch.images, batch.flipped)
        terms, _metrics = self.module.loss_terms(images, batch.labels)
        total = sum(weight * value for weight, value in terms.values())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.steps += 1
        if self.steps % self.every == 0:
            float(total)
        self.wall += time.perf_counter() - start[0]
        self.cpu += time.process_time() - start[1]


def time_steps(module: pl.LightningModule, raw: RawLoop, batches: Batches, block: int) -> dict[str, float]:
    """Instrument ``module`` (instance attributes, so no extra callback joins the loop): after every
    ``block`` Lightning steps, in the module's ``on_train_batch_end`` (the last hook of a step), the
    raw loop runs its steps on the same ``block`` batches. Returns the seconds, filled in during the
    fit: the Lightning steps' (from the epoch's start to the last step's end, less the raw steps')
    and the raw steps'."""
    seconds: dict[str, float] = {}
    batch_list = batches.batches

    def on_train_epoch_start() -> None:
        seconds["start_wall"], seconds["start_cpu"] = time.perf_counter(), time.process_time()

    def on_train_batch_end(outputs: Any, batch: Any, batch_idx: int) -> None:
        if (batch_idx + 1) % block and batch_idx + 1 < len(batch_list):
            return
        for index in range(raw.steps, batch_idx + 1):
            raw.step(batch_list[index])
        end = (time.perf_counter(), time.process_time())
        seconds["lightning_wall"] = end[0] - seconds["start_wall"] - raw.wall
        seconds["lightning_cpu"] = end[1] - seconds["start_cpu"] - raw.cpu
        seconds["raw_wall"], seconds["raw_cpu"] = raw.wall, raw.cpu

    module.on_train_epoch_start = on_train_epoch_start  # type: ignore[method-assign]
    module.on_train_batch_end = on_train_batch_end  # type: ignore[method-assign]
    return seconds


def ekd_train_fit(cfg: Any, batches: Batches, folder: Path, block: int) -> dict[str, float]:
    """``Trainer.fit`` as ekd-train runs it (loggers, callbacks and Trainer from the config), paired
    step by step with the raw loop."""
    from ekd.config import instantiate_entries
    from ekd.eval.callback import VerificationCallback
    from ekd.report.wandb_runs import finish_wandb_run
    from ekd.run import build_trainer

    cfg.output_dir = str(folder)
    cfg.run_group = "bench"
    module = new_module(cfg)
    seconds = time_steps(module, RawLoop(cfg, len(batches)), batches, block)
    loggers = instantiate_entries(cfg.logger, "logger")
    callbacks = instantiate_entries(cfg.callbacks, "callbacks")
    for callback in callbacks:
        if isinstance(callback, VerificationCallback):
            callback.sets = {}  # no datamodule here; its epoch-end pass is outside the timed span anyway
    trainer = build_trainer(cfg, folder, loggers, callbacks)
    try:
        trainer.fit(module, batches)
    finally:
        finish_wandb_run()
    return seconds


def raw_math_step(module: Any, batch: FaceBatch, batch_idx: int) -> torch.Tensor:
    """The raw loop's step math as a ``training_step``: no logging, no non-finite check."""
    images = normalise_batch(batch.images, batch.flipped)
    terms, _metrics = module.loss_terms(images, batch.labels)
    return sum(weight * value for weight, value in terms.values())


def bare_fit(cfg: Any, batches: Batches, folder: Path, block: int, floor: bool = False) -> dict[str, float]:
    """``Trainer.fit`` with Lightning's defaults and no logger, callback, checkpoint or progress bar,
    paired step by step with the raw loop. ``floor``: the module's ``training_step`` is the raw loop's
    math (:func:`raw_math_step`), so what is left is Lightning's own loop."""
    module = new_module(cfg)
    if floor:
        module.training_step = types.MethodType(raw_math_step, module)  # type: ignore[method-assign]
    seconds = time_steps(module, RawLoop(cfg, len(batches)), batches, block)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=int(cfg.trainer.log_every_n_steps),
        default_root_dir=str(folder),
    )
    trainer.fit(module, batches)
    return seconds


VARIANTS: dict[str, str] = {
    "ekd": "ekd-train's Trainer (logger, callbacks, nonfinite=stop)",
    "bare": "bare Trainer.fit (no logger / callbacks), same module",
    "floor": "bare Trainer.fit, training_step = the raw loop's math",
}


def _ratio(values: list[float]) -> str:
    return f"{statistics.median(values):.3f}x [{min(values):.3f}-{max(values):.3f}]"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=200, help="training steps per fit")
    parser.add_argument("--logger", default="wandb", help="the logger group: wandb (offline), csv, none")
    parser.add_argument(
        "--variants", default="ekd,bare,floor", help=f"comma-separated, of {sorted(VARIANTS)}"
    )
    parser.add_argument("--block", type=int, default=1, help="steps of each loop in turn")
    parser.add_argument("--size", type=int, default=16, help="input side (must match the student)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--markdown", default=None)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (after the bench's own)")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.rounds = 4, 1
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants or set(variants) - set(VARIANTS):
        parser.error(f"--variants: expected some of {sorted(VARIANTS)}, got {variants}")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # Lightning's advice (few workers, ...) is not what is measured
    cfg = compose(args.logger, args.overrides)
    batches = make_batches(cfg, max(args.steps, 2), (args.size, args.size))
    workdir = Path(tempfile.mkdtemp(prefix="bench_lightning_"))
    fits: dict[str, Callable[[str], dict[str, float]]] = {
        "ekd": lambda tag: ekd_train_fit(cfg, batches, workdir / f"ekd{tag}", args.block),
        "bare": lambda tag: bare_fit(cfg, batches, workdir / f"bare{tag}", args.block),
        "floor": lambda tag: bare_fit(cfg, batches, workdir / f"floor{tag}", args.block, floor=True),
    }
    for name in variants:  # warm-up: allocator, oneDNN kernels, first-fit set-up, W&B service
        fits[name]("warmup")
    results: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for index in range(args.rounds):
        for name in variants:
            results[name].append(fits[name](str(index)))
    steps = len(batches)
    raw_wall = [r["raw_wall"] for name in variants for r in results[name]]
    raw_cpu = [r["raw_cpu"] for name in variants for r in results[name]]
    rows = [
        [
            "raw PyTorch loop (paired with each fit)",
            f"{1000 * statistics.median(raw_wall) / steps:.2f}",
            f"{1000 * statistics.median(raw_cpu) / steps:.2f}",
            "1.00x",
            "1.00x",
        ]
    ]
    for name in variants:
        runs = results[name]
        rows.append(
            [
                VARIANTS[name],
                f"{1000 * statistics.median(r['lightning_wall'] for r in runs) / steps:.2f}",
                f"{1000 * statistics.median(r['lightning_cpu'] for r in runs) / steps:.2f}",
                _ratio([r["raw_wall"] / r["lightning_wall"] for r in runs]),
                _ratio([r["raw_cpu"] / r["lightning_cpu"] for r in runs]),
            ]
        )
    table = markdown_table(
        ["loop", "ms / step (wall)", "ms / step (CPU)", "throughput vs raw (wall): median [range]", "(CPU)"],
        rows,
    )
    text = (
        f"Training loop at a GPU-like step: {cfg.student.name} {dict(cfg.student.kwargs)}, "
        f"{len(batches.batches[0].labels)} rows per batch, {cfg.data.synthetic.identities} classes, "
        f"logger={args.logger}, log_every_n_steps={cfg.trainer.log_every_n_steps}, {steps} steps per "
        f"fit, the loops alternating every {args.block} step(s), {args.rounds} rounds, {args.threads} "
        f"thread(s)\n\n{table}\n"
    )
    return emit(text, args.markdown)


if __name__ == "__main__":
    main()
