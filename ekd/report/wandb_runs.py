"""W&B runs: the final summary of a training run, and closing runs (ekd-train, ekd-table)."""

from __future__ import annotations

import os
from pathlib import Path

from ekd.report.results import RunResults


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


def log_run_summary(results: RunResults) -> None:
    """The run's final numbers in the active W&B run: summary metrics per verification set (accuracy,
    its std, TPR@FPR; the genuine / impostor counts of template sets such as ``synth_ijb``), params,
    MACs, throughput and a per-set ``wandb.Table``; ``status`` and, for a failed run, ``error/type``,
    ``error/message``, ``error/step``. No-op without a run."""
    import wandb

    run = wandb.run
    if run is None:
        return
    run.summary["status"] = results.status
    for key, value in (results.error or {}).items():
        run.summary[f"error/{key}"] = value
    metrics = results.metrics
    fprs = sorted({key for values in metrics.values() for key in (values.get("tpr_at_fpr") or {})})
    rows = []
    for name, values in metrics.items():
        run.summary[f"final/{name}/acc"] = values.get("accuracy")
        run.summary[f"final/{name}/acc_std"] = values.get("accuracy_std")
        tprs = [(values.get("tpr_at_fpr") or {}).get(fpr) for fpr in fprs]
        for fpr, tpr in zip(fprs, tprs):
            if tpr is not None:
                run.summary[f"final/{name}/tpr@fpr={fpr}"] = tpr
        for count in ("genuine", "impostors"):  # template sets (synth_ijb): what the TPRs rest on
            if values.get(count) is not None:
                run.summary[f"final/{name}/{count}"] = values[count]
        rows.append(
            [results.method, results.student, name, values.get("accuracy"), values.get("accuracy_std"), *tprs]
        )
    run.summary["final/mean_acc"] = results.mean_accuracy
    run.summary["params"] = results.params
    run.summary["macs"] = results.macs
    run.summary["throughput_images_per_s"] = (results.throughput or {}).get("images_per_s")
    columns = ["method", "student", "set", "accuracy", "accuracy_std", *(f"tpr@fpr={f}" for f in fprs)]
    run.log({"final/verification": wandb.Table(columns=columns, data=rows)})
