"""The ``RunResults`` record of an ``ekd-train`` run, from its composed config.

:func:`run_record` fills in what a run knows from its config (method row, dataset, networks, teacher
file and hash, seed, where it ran, versions, machine); the caller adds what it measured, or turns it into the
record of a run that stopped on an exception with :meth:`RunResults.as_failed`.
"""

from __future__ import annotations

import datetime as _datetime
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ekd.report.results import RunResults, git_commit, library_versions, machine_record


def run_record(
    cfg: Any,
    output_dir: Path,
    experiment: str | None,
    sweep: str | None,
    started: float,
    source_root: Path | None = None,
) -> RunResults:
    """A :class:`RunResults` of the run configured by ``cfg`` (a composed ``TrainConfig``) with no
    measurements yet; ``started``: ``time.time()`` at its start; ``source_root``: the checkout whose git
    commit is recorded (None outside one)."""
    from ekd.models import file_sha256

    distilled = bool(cfg.distill.objectives)
    return RunResults(
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
        seed=int(cfg.seed),
        experiment=experiment,
        sweep=sweep,
        metrics={},
        wall_time_s=time.time() - started,
        git_commit=git_commit(source_root),
        output_dir=str(Path(output_dir).resolve()),
        created=_datetime.datetime.now(_datetime.timezone.utc).isoformat(timespec="seconds"),
        versions=library_versions(),
        machine=machine_record(),
    )
