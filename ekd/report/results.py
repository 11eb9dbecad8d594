"""The ``results.json`` file every ``ekd-train`` run leaves in its output directory.

Format ``ekd-results/1`` (one JSON object; rates are fractions in [0, 1], never percent)::

    {
      "format": "ekd-results/1",
      "method": "ekd",                 # table row: none (no KD), teacher, kd, rkd, ..., kd_rkd
      "objectives": {"ekd": {"weight": 1.0, ...}},
      "dataset": "ms1mv2",             # data.name
      "student": "mobilefacenet",      # registry name of the trained backbone
      "student_label": "MobileFaceNet",
      "teacher": "iresnet50" | null,  "teacher_checkpoint": "...", "teacher_sha256": "..." | null,
      "teacher_cache": {"path": "...", "used": true | false | null} | null,  # distill.teacher_cache
      "seed": 0, "experiment": "ms1mv2/mobilefacenet/ekd" | null, "sweep": "<sweep dir name>" | null,
      "metrics": {"lfw": {"accuracy": 0.9952, "accuracy_std": 0.003, "tpr_at_fpr": {"1e-4": ...},
                          "auc": ..., "eer": ..., "num_pairs": 6000, ...}, ...},
      "roc": {"lfw": {"fpr": [...], "tpr": [...]}},      # down-sampled ROC curves, for plots
      "params": 1.2e6, "macs": 2.3e8, "throughput": {"images_per_s": ..., "batch_size": 64, ...},
      "wall_time_s": 123.4, "git_commit": "..." | null, "output_dir": "...", "created": "ISO time",
      "versions": {"ekd": ..., "torch": ..., "pytorch_lightning": ...}
    }

Files are written atomically (temporary file + rename), so a reader never sees half a file, and a
directory that already holds a ``results.json`` is a finished run that :func:`check_unfinished`
refuses to reuse unless told to overwrite.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_FILE = "results.json"
FORMAT = "ekd-results/1"
REQUIRED_KEYS = ("format", "method", "dataset", "student", "seed", "metrics")


class ResultsError(ValueError):
    """A results file that is missing, unreadable or not in the expected format."""


class FinishedRunError(FileExistsError):
    """The output directory already holds a finished run."""


def check_unfinished(directory: str | os.PathLike, overwrite: bool = False) -> None:
    """Raise :class:`FinishedRunError` when ``directory`` holds a results file and ``overwrite`` is off."""
    path = Path(directory) / RESULTS_FILE
    if path.exists() and not overwrite:
        raise FinishedRunError(
            f"{path} exists: {directory} holds a finished run. Choose another output directory "
            f"(e.g. drop the fixed hydra.run.dir) or pass overwrite=true to replace it."
        )


def _json_ready(value: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays become numbers/lists, NaN and inf become None."""
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_results(directory: str | os.PathLike, results: Mapping[str, Any]) -> Path:
    """Write ``results`` as ``directory/results.json`` atomically; return the path."""
    data = {"format": FORMAT, **results}
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise ResultsError(
            f"results for {directory} lack the keys {missing} (required: {list(REQUIRED_KEYS)})"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / RESULTS_FILE
    text = json.dumps(_json_ready(data), indent=2, sort_keys=False, allow_nan=False)
    fd, tmp = tempfile.mkstemp(prefix=".results.", suffix=".json.tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read one results file (a path to the file or to its run directory) and check its format."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise ResultsError(f"no results file at {path}") from error
    except json.JSONDecodeError as error:
        raise ResultsError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: expected a JSON object, got {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise ResultsError(f"{path}: format is {data.get('format')!r}, expected {FORMAT!r}")
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise ResultsError(f"{path}: missing keys {missing}")
    if not isinstance(data["metrics"], dict):
        raise ResultsError(f"{path}: 'metrics' must map set names to metric objects")
    data["_path"] = str(path)
    return data


def find_results(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Every results file under ``paths`` (files or directories searched recursively), sorted, unique."""
    found: set[Path] = set()
    for entry in paths:
        entry = Path(entry)
        if entry.is_file():
            found.add(entry.resolve())
        elif entry.is_dir():
            found.update(p.resolve() for p in entry.rglob(RESULTS_FILE))
        else:
            raise ResultsError(f"{entry} is neither a results file nor a directory")
    return sorted(found)


def collect_results(paths: Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    """Load every results file under ``paths`` (see :func:`find_results`)."""
    paths = list(paths)
    files = find_results(paths)
    if not files:
        raise ResultsError(f"no {RESULTS_FILE} found under {', '.join(str(p) for p in paths)}")
    return [load_results(f) for f in files]


def downsample_roc(fpr: np.ndarray, tpr: np.ndarray, points: int) -> dict[str, list[float]]:
    """At most ``points`` ROC points, spread evenly in log10(FPR) (where face verification is read).

    The first and last points are kept; for each target FPR the largest TPR at FPR <= target is
    taken, so the down-sampled curve never lies above the full one.
    """
    fpr = np.asarray(fpr, dtype=np.float64)
    tpr = np.asarray(tpr, dtype=np.float64)
    if fpr.size <= points:
        return {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
    positive = fpr[fpr > 0]
    low = positive.min() if positive.size else 1e-6
    targets = np.unique(np.concatenate([[0.0], np.logspace(np.log10(low), 0.0, points - 1)]))
    running_max = np.maximum.accumulate(tpr)  # ROC points come in increasing FPR order
    index = np.searchsorted(fpr, targets, side="right") - 1
    index = np.clip(index, 0, fpr.size - 1)
    return {"fpr": targets.tolist(), "tpr": running_max[index].tolist()}
