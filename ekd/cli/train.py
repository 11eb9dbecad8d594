"""``ekd-train``: train a teacher, a no-KD student or a distilled student from a Hydra config.

    ekd-train experiment=synthetic/student distill=ekd teacher.checkpoint=T
    ekd-train experiment=ms1mv2/student student=resnet18 distill=ekd data.root=DIR teacher.checkpoint=T
    ekd-train -m experiment=synthetic/student distill=kd,rkd,ekd teacher.checkpoint=T seed=0,1,2
    ekd-train ... hydra.run.dir=DIR resume=auto   # continue an interrupted run
    ekd-train --help                              # usage, examples and the config groups

The config is ``conf/train.yaml`` typed by :class:`ekd.config.TrainConfig`; the run itself is
:func:`ekd.run.run` (shared with ``ekd-demo``). This module is the entry point: it tells the run whether
its folder was named by the user (``resume=auto`` needs that), turns user errors into one message and
exit code 2, signals into exit code 128+N, and lets a multirun go on after a failed job. The Hydra task
returns the mean verification accuracy, the objective of ``hparams_search=optuna``.
"""

from __future__ import annotations

import math
import os
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from ekd.config import CONF_DIR, ConfigError, register_configs
from ekd.run import RunInterrupted, run, user_error

# Hydra composes the config inside ``main``; the ConfigStore entries must exist before that.
register_configs()

__all__ = ["ConfigError", "main", "run"]


def objective_value(results: Any) -> float | None:
    """What the Hydra task returns (the optuna sweeper maximises it): the mean verification accuracy."""
    value = None if results is None else results.mean_accuracy
    return None if value is None or not math.isfinite(value) else float(value)


HELP = """ekd-train: train a teacher, a no-KD student or a distilled student (Hydra; configs in conf/).

usage: ekd-train [-m] [KEY=VALUE ...]       -m: a sweep (Hydra multirun) over comma-separated values

examples:
  ekd-train experiment=synthetic/teacher hydra.run.dir=runs/teacher
  ekd-train experiment=synthetic/student distill=ekd teacher.checkpoint=runs/teacher/checkpoints/last.ckpt
  ekd-train experiment=ms1mv2/student student=resnet18 distill=rkd data.root=/data/ms1mv2 teacher.checkpoint=T
  ekd-train -m experiment=synthetic/student distill=kd,rkd,ekd seed=0,1,2 teacher.checkpoint=T
  ekd-train ... hydra.run.dir=DIR resume=auto   # continue an interrupted run (resume=FILE: a checkpoint)
  ekd-train --cfg job experiment=...            # print the composed config and stop

exit codes: 0 done, 1 the run failed (results.json says why), 2 a user error (one message, no
traceback; HYDRA_FULL_ERROR=1 shows it), 128+N stopped by signal N (checkpoint saved; resume=auto).
"""


def _print_help() -> None:
    """HELP, then every config group and its options (shared recipes, files starting with _, hidden)."""
    from ekd.config import EXPERIMENTS_DIR

    print(HELP)
    print("config groups (GROUP=OPTION):")
    groups = {
        p.name: sorted(q.stem for q in p.glob("*.yaml")) for p in sorted(CONF_DIR.iterdir()) if p.is_dir()
    }
    groups["experiment"] = sorted(
        p.relative_to(EXPERIMENTS_DIR).with_suffix("").as_posix()
        for p in EXPERIMENTS_DIR.rglob("*.yaml")
        if not p.name.startswith("_")
    )
    for group, options in groups.items():
        if options:
            print(f"  {group}: {', '.join(options)}")
    print("\nkeys: ekd-train --cfg job [overrides] prints them all; docs/experiments.md explains them")


_task_started = False


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _hydra_task(cfg: DictConfig) -> float | None:
    global _task_started
    _task_started = True
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    fixed = any(o.startswith(("hydra.run.dir=", "hydra.sweep.dir=")) for o in hydra_cfg.overrides.hydra)
    output_dir = hydra_cfg.runtime.output_dir
    try:
        results = run(
            cfg,
            output_dir=output_dir,
            experiment=hydra_cfg.runtime.choices.get("experiment"),
            sweep=Path(hydra_cfg.sweep.dir).name if multirun else None,
            fixed_folder=fixed,
        )
    except RunInterrupted as stop:
        print(f"ekd-train: {stop}; continue it with resume=auto hydra.run.dir={output_dir}", file=sys.stderr)
        sys.exit(128 + stop.signum)
    except Exception as error:
        cause = user_error(error)
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or (cause is None and not multirun):
            raise
        if cause is None:  # a multirun goes on after a failed job (its results.json says why)
            traceback.print_exc()
            print(f"ekd-train: job {hydra_cfg.job.num} ({output_dir}) failed; going on", file=sys.stderr)
            return None
        print(f"ekd-train: error: {cause} ({type(cause).__name__})", file=sys.stderr)
        if multirun:
            return None
        sys.exit(2)
    return objective_value(results)


def main(argv: Iterable[str] | None = None) -> None:
    """Console entry point; ``argv`` replaces the command-line arguments (Hydra reads ``sys.argv``)."""
    global _task_started
    _task_started = False  # per call: an earlier call in this process must not turn a typo into exit 1
    saved = sys.argv
    if argv is not None:
        sys.argv = [saved[0] if saved else "ekd-train", *argv]
    try:
        if any(arg in ("-h", "--help") for arg in sys.argv[1:]):
            _print_help()
            return
        _hydra_task()
    except SystemExit as exit_:
        # Hydra reports a config that does not compose (a typo, a missing option) and exits with 1
        # before the task starts: that is a user error
        if exit_.code == 1 and not _task_started:
            raise SystemExit(2) from None
        raise
    finally:
        sys.argv = saved


if __name__ == "__main__":
    main()
