"""Closing W&B runs: one helper for every command that opens one (ekd-train, ekd-table)."""

from __future__ import annotations

import os
from pathlib import Path


def finish_wandb_run() -> Path | None:
    """Finish the active W&B run, if any; for an offline run print the ``wandb sync`` command.

    Returns the run directory of an offline run (None otherwise). Multirun jobs call this between
    jobs so that they never share a run.
    """
    import wandb

    run = wandb.run
    if run is None:
        return None
    offline = os.environ.get("WANDB_MODE", "") in ("offline", "dryrun") or bool(
        getattr(run.settings, "_offline", False)
    )
    run_dir = Path(run.dir).parent if getattr(run, "dir", None) else None
    wandb.finish()
    if offline and run_dir is not None:
        print(f"W&B offline run saved; upload it with:  wandb sync {run_dir}")
        return run_dir
    return None
