"""``ekd-demo``: the whole comparison at synthetic scale, on a CPU, with nothing to download.

    ekd-demo                      # ~7 minutes on 2 CPU cores (measured); results in demo_out/<time>/
    ekd-demo --out DIR --methods none,kd,ekd --student resnet18
    ekd-demo --quick              # seconds: tiny data and 2 steps per run (a smoke test)
    ekd-demo --config-dir my_conf --methods none,mine imports=[my_losses]   # a user's method
    ekd-demo --study --seeds 5 --out study_out   # the calibrated study: every row x 5 seeds (resumable)

1. generates the synthetic benchmark (``ekd.data.synthetic``; cached under ``$EKD_DATA_DIR``);
2. trains the teacher (``experiment=synthetic/teacher``);
3. trains the no-KD student and one student per method (``experiment=synthetic/student
   student=<tiny student> distill=<method>`` with ``teacher.checkpoint`` = the teacher's last
   checkpoint), each evaluated on the synthetic verification sets. The methods are the method files
   (``conf/distill/*.yaml`` and ``--config-dir``'s ``distill/``); without ``--methods`` those whose
   file says ``demo: true`` (the rows of the EKD paper's Table 2), in their ``order``;
4. prints the comparison table (``ekd.report``) and saves it as ``comparison.md`` / ``.png`` / ``.csv``
   / ``.tex`` in the output directory.

Every run goes through :func:`ekd.cli.train.run` with a config composed by Hydra from the same files
``ekd-train`` uses; the demo only adds its output directories, the teacher checkpoint and the logger
choice (CSV by default; ``--wandb`` for offline W&B runs).

Two tiers. The demo (default) is the pipeline end to end, one seed per row, on a small benchmark.
``--study`` is the calibrated comparison: the benchmark and training budget of ``STUDY_OVERRIDES``
(still to be calibrated: see its comment), every row x ``--seeds`` seeds (default 5)
with one teacher for the whole study. Run folders are ``<out>/<method>`` for one seed and
``<out>/<method>/seed<k>`` for several. Every run is started with ``resume=auto``: the same command on
the same ``--out`` skips finished runs and continues interrupted ones from their last checkpoint, so a
killed study loses at most the steps since its last checkpoint. A progress line before each run gives
the runs done and an ETA from the mean time of the runs trained so far.
"""

from __future__ import annotations

import argparse
import datetime as _datetime
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ekd.config import CONF_DIR, list_methods, register_configs

# --student -> the synthetic-scale student config (conf/student)
STUDENTS: dict[str, str] = {"mobilefacenet": "tiny_mobilefacenet", "resnet18": "tiny_resnet18"}

# --quick: the same pipeline on a few dozen images, two optimiser steps per run
QUICK_OVERRIDES: tuple[str, ...] = (
    "data.synthetic.identities=8",
    "data.synthetic.images_per_identity=4",
    "data.synthetic.pairs=20",
    "data.synthetic.heldout_identities=4",
    "data.synthetic.template_identities=4",  # a template set of 8 images: the synth_ijb path, no TPR
    "data.synthetic.templates_per_identity=2",
    "data.synthetic.images_per_template=1",
    "data.general=4",
    "data.identities=2",
    "data.images_per_identity=2",
    "data.batch_size=8",
    "optim.lr=0.01",  # two steps at 0.1 can wreck a network that has no warm-up
    "schedule.warmup_epochs=0",
    "schedule.milestones=[100]",
    "trainer.max_steps=2",
    "benchmark.batch_size=2",
    "benchmark.iterations=1",
    "benchmark.warmup=0",
    "eval.batch_size=40",
    "eval.roc_points=20",
)


# --study: the calibrated benchmark and budget. Not calibrated yet (issue [Comparison], part 2): until
# then --study runs the demo's benchmark and budget over several seeds, which is what this empty tuple
# gives; the calibration's overrides and their measurements (BENCHMARKS.md) replace it.
STUDY_OVERRIDES: tuple[str, ...] = ()
STUDY_SEEDS = 5


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ekd-demo",
        description="Train a teacher, a no-KD student and every distillation method on the synthetic "
        "benchmark, then print the comparison table.",
    )
    parser.add_argument("--out", type=Path, default=None, help="output directory (default demo_out/<time>)")
    parser.add_argument(
        "--student", choices=sorted(STUDENTS), default="mobilefacenet", help="student network"
    )
    parser.add_argument(
        "--methods",
        default=None,
        help="comma-separated method files (distill configs) to train after the teacher "
        "(default: those marked demo: true, the EKD paper's Table 2 rows)",
    )
    parser.add_argument(
        "--config-dir",
        type=Path,
        action="append",
        default=[],
        help="a folder of extra configs (e.g. its distill/<method>.yaml); repeatable",
    )
    parser.add_argument("--seed", type=int, default=0, help="the teacher's seed and the students' first seed")
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        help=f"seeds per student row: --seed, --seed + 1, ... (default 1; {STUDY_SEEDS} with --study)",
    )
    parser.add_argument(
        "--study",
        action="store_true",
        help="the calibrated study: its benchmark and budget, every row x --seeds seeds; resumable",
    )
    parser.add_argument("--quick", action="store_true", help="tiny data and 2 steps per run (for tests)")
    parser.add_argument("--wandb", action="store_true", help="log every run to W&B (offline) instead of CSV")
    parser.add_argument(
        "overrides", nargs="*", help="extra Hydra overrides applied to every run, e.g. trainer.max_epochs=2"
    )
    return parser


def select_methods(text: str | None, config_dirs: Sequence[Path]) -> list[str]:
    """The methods to run: those named in ``text`` (comma-separated), else every ``demo: true`` one."""
    known = list_methods(config_dirs)
    if text is None:
        return [m.name for m in known if m.demo]
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in {k.name for k in known}]
    if unknown:
        raise SystemExit(f"ekd-demo: unknown methods {unknown}; known: {', '.join(k.name for k in known)}")
    return methods


def search_path_override(config_dirs: Sequence[Path]) -> list[str]:
    """``hydra.searchpath=[file://...]`` for extra config folders (none: no override)."""
    if not config_dirs:
        return []
    return ["hydra.searchpath=[" + ",".join(f"file://{Path(d).resolve()}" for d in config_dirs) + "]"]


def compose_run_config(experiment: str, overrides: Sequence[str]):  # -> DictConfig
    """Compose ``conf/train.yaml`` with ``experiment=<experiment>`` and ``overrides`` (Hydra compose API)."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="ekd-demo"):
        return compose(config_name="train", overrides=[f"experiment={experiment}", *overrides])


def run_folder(out: Path, method: str, seed: int, several: bool) -> Path:
    """``<out>/<method>`` for one seed, ``<out>/<method>/seed<k>`` for several."""
    return out / method / f"seed{seed}" if several else out / method


def eta_text(durations: Sequence[float], remaining: int) -> str:
    """``ETA 12.3 min`` from the mean of the runs trained so far (``ETA ?`` before the first)."""
    if not durations:
        return "ETA ?"
    return f"ETA {sum(durations) / len(durations) * remaining / 60:.1f} min"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    methods = select_methods(args.methods, args.config_dir)
    seeds_count = args.seeds if args.seeds is not None else (STUDY_SEEDS if args.study else 1)
    if seeds_count < 1:
        raise SystemExit(f"ekd-demo: --seeds must be at least 1, got {seeds_count}")
    if args.study and args.quick:
        raise SystemExit("ekd-demo: --study and --quick exclude each other")
    seeds = [args.seed + k for k in range(seeds_count)]
    from rich.console import Console

    from ekd.report import build_tables, collect_results, save_tables, to_markdown
    from ekd.run import run
    from ekd.runs import folder_state

    console = Console()
    started = time.time()
    stamp = _datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out = (args.out or Path("demo_out") / stamp).resolve()
    out.mkdir(parents=True, exist_ok=True)
    common = [
        "logger=" + ("wandb" if args.wandb else "csv"),
        # the same command on the same --out continues: finished runs are skipped, others resumed
        "resume=auto",
        # the final evaluation of every run makes the in-training verification redundant here
        "callbacks.verification=null",
        *search_path_override(args.config_dir),
        *(STUDY_OVERRIDES if args.study else ()),
        *(QUICK_OVERRIDES if args.quick else ()),
        *args.overrides,
    ]
    jobs = [(method, seed) for method in methods for seed in seeds]
    total = 1 + len(jobs)
    tier = "study" if args.study else "demo"
    console.rule(
        f"[bold]ekd-demo[/bold] ({tier}): teacher + {len(methods)} rows x {len(seeds)} seed(s) -> {out}"
    )
    durations: list[float] = []  # of the runs trained in this invocation (skipped ones excluded)

    def stage(index: int, title: str) -> None:
        elapsed = time.time() - started
        console.rule(
            f"[{index}/{total}] {title}   (elapsed {elapsed / 60:.1f} min, "
            f"{eta_text(durations, total - index + 1)})"
        )

    stage(1, "teacher (synthetic/teacher)")
    teacher_dir = out / "teacher"
    teacher_cfg = compose_run_config("synthetic/teacher", [f"seed={args.seed}", *common])
    teacher = run(teacher_cfg, teacher_dir, experiment="synthetic/teacher", sweep=out.name)
    checkpoint = teacher.checkpoint or teacher.backbone_file
    experiment = "synthetic/student"
    for index, (method, seed) in enumerate(jobs, start=2):
        folder = run_folder(out, method, seed, len(seeds) > 1)
        stage(index, f"{experiment} distill={method} seed={seed}")
        was_finished = folder_state(folder) == "finished"
        overrides = [f"seed={seed}", *common, f"student={STUDENTS[args.student]}", f"distill={method}"]
        cfg = compose_run_config(experiment, overrides)
        if cfg.distill.objectives:
            cfg.teacher.checkpoint = str(checkpoint)
        run_started = time.time()
        run(cfg, folder, experiment=experiment, sweep=out.name)
        if not was_finished:
            durations.append(time.time() - run_started)

    tables = build_tables(collect_results([out]))
    paths = save_tables(tables, out)
    elapsed = time.time() - started
    console.rule(f"comparison ({elapsed / 60:.1f} min in all)")
    print(to_markdown(tables))
    for fmt, path in paths.items():
        print(f"{fmt}: {path}")
    (out / "demo_time.txt").write_text(f"{elapsed:.1f} s ({os.cpu_count()} CPUs)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
