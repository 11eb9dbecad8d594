"""The ``results.json`` file every ``ekd-train`` run leaves in its output directory: one typed record.

:class:`RunResults` is the schema (format ``ekd-results/2``); :func:`write_results` and
:func:`load_results` are the only writer and reader. Rates are fractions in [0, 1], never percent;
non-finite numbers are stored as ``null``. A run whose fit raised leaves a record too
(:func:`failure_record`, or :meth:`RunResults.as_failed` of the record built so far: ``status:
"failed"``, the exception in ``error``, empty metrics), so that a sweep's table can say which jobs
failed and why. Fields:

===================  ==============================================================================
format               ``"ekd-results/2"`` (files of format 1 are still read; see :func:`load_results`)
status               ``"finished"`` (the fit ran to its end and the backbone was evaluated) or ``"failed"``
                     (the fit raised: ``metrics`` is empty); files without the key are ``"finished"``
error                null for a finished run; for a failed one ``{"type": exception class name,
                     "message": str(exception), "step": global step it happened at (or null)}``
method               the table row's key: ``none`` (no KD), ``teacher``, ``kd``, ``ekd``, ``kd_rkd``, ...
label                the row's display name (the method file's ``label``: ``KD``, ``EKD``, ...)
order                where the row goes in the table (the method file's ``order``; lower first)
paper_row            the row of the paper's Table 2 it reproduces (``paper_tables.csv``), or null
objectives           ``{name: {weight, **hyper-parameters}}`` of the run's distillation objectives
dataset              ``data.name``: the table a run belongs to (``ms1mv2``, ``synthetic``, ...)
data_record          what defines the data, for telling runs on different data apart (ekd-table never
                     averages runs whose records differ): for synthetic data the generator's
                     ``synthetic.json`` (``generator_version`` and its arguments; ``root`` / ``path``
                     keys are ignored); null when not recorded
student              registry name of the trained backbone; ``student_label`` its display name
teacher              registry name of the teacher (null without distillation), with
                     ``teacher_checkpoint`` (path) and ``teacher_sha256`` (hash of that file)
teacher_cache        ``{"path", "used"}`` of a configured teacher embedding cache, else null
seed                 the run's seed
experiment, sweep    the experiment config's name and the multirun directory's name (or null)
metrics              ``{set: {"accuracy", "accuracy_std", "tpr_at_fpr": {"1e-4": ...}, "auc", "eer",
                     "num_pairs", ...}}`` per verification set (IJB sets: TPR@FPR only; the synthetic
                     template set ``synth_ijb``: TPR@FPR, ``impostors``, ``genuine``); a set whose
                     embeddings were not finite has ``{"accuracy": null, "error": "..."}``
mean_accuracy        mean accuracy over the pair-verification sets (null when none has one)
eval_protocol        how ``metrics`` were computed (``ekd.eval.protocol_record``): ``{"precision":
                     "32-true" | "16-mixed" | "bf16-mixed", "pair_sets": {"flip": "sum" | "none",
                     "n_folds"}, "ijb": null (IJB not evaluated) or {"preset": "insightface" | "tface",
                     "flip_mode", "norm_score", "detector_score", "label", "tpr_rule"}}``, plus
                     ``"templates"`` (the template-set protocol) when one was scored; null in files
                     written before ekd recorded it (their IJB sets used the insightface protocol, their
                     embeddings fp16 autocast on CUDA)
roc                  ``{set: {"fpr": [...], "tpr": [...]}}`` down-sampled ROC curves, for plots
params, macs         parameters and multiply-accumulates (112 x 112) of the trained backbone
throughput           ``{"images_per_s", "batch_size", "iterations", "device", "threads"}`` or null
global_step, epochs  optimizer steps and epochs the fit ran
train_batch_size     training images per optimizer step, all processes and accumulation included (null
                     when not recorded)
train_images_per_s   training images per second of the run's last fit (the steps it trained, not those of
                     the fit it resumed from, x train_batch_size / fit_time_s); null when not recorded
peak_memory_mib      the run's peak memory during its last fit in MiB (``ekd.resources``: CUDA memory
                     allocated by tensors on a GPU, the process's resident set on the CPU); null when not
                     measurable
fit_time_s           seconds in ``Trainer.fit``; ``wall_time_s`` the whole run
git_commit           ``git rev-parse HEAD`` of the source checkout (``+dirty`` with local changes)
output_dir           the run directory; ``checkpoint`` its last Lightning checkpoint (or null) and
                     ``backbone_file`` the plain backbone state_dict (insightface layout)
created              ISO time the file was written; ``versions`` of ekd, torch, Lightning, numpy, Pillow,
                     Python
machine              ``{"cpu", "cpu_capability", "cpus", "accelerator"}`` (:func:`machine_record`): the
                     hardware that ran it, for the cost columns (time, images/s) and because the same
                     seed can train differently where the kernels round differently (e.g. AVX2 vs
                     AVX-512 paths); null in files written before ekd recorded it
===================  ==============================================================================

Files are written atomically (temporary file + rename), so a reader never sees half a file, and a
directory that already holds the ``results.json`` of a finished run is one that :func:`check_unfinished`
refuses to reuse unless told to overwrite (the record of a failed run is simply replaced by the rerun).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_FILE = "results.json"
FORMAT = "ekd-results/2"
FORMAT_V1 = "ekd-results/1"

DEFAULT_ORDER = 1000.0

FINISHED = "finished"
FAILED = "failed"
STATUSES: tuple[str, ...] = (FINISHED, FAILED)


@dataclass
class RunResults:
    """One run's ``results.json`` (fields: see the module docstring)."""

    method: str
    dataset: str
    student: str
    seed: int
    metrics: dict[str, dict[str, Any]]
    status: str = FINISHED
    error: dict[str, Any] | None = None
    label: str = ""  # "" -> the method key
    order: float = DEFAULT_ORDER
    paper_row: str | None = None
    objectives: dict[str, Any] = field(default_factory=dict)
    student_label: str | None = None
    teacher: str | None = None
    teacher_checkpoint: str | None = None
    teacher_sha256: str | None = None
    teacher_cache: dict[str, Any] | None = None
    experiment: str | None = None
    sweep: str | None = None
    mean_accuracy: float | None = None
    eval_protocol: dict[str, Any] | None = None
    roc: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    params: int | None = None
    macs: int | None = None
    throughput: dict[str, Any] | None = None
    global_step: int | None = None
    epochs: int | None = None
    fit_time_s: float | None = None
    train_batch_size: int | None = None
    train_images_per_s: float | None = None
    peak_memory_mib: float | None = None
    data_record: dict[str, Any] | None = None
    wall_time_s: float | None = None
    git_commit: str | None = None
    output_dir: str | None = None
    checkpoint: str | None = None
    backbone_file: str | None = None
    created: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    machine: dict[str, Any] | None = None
    format: str = FORMAT
    # where the record was read from (not stored in the file)
    path: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        self.label = self.label or self.method
        problem = _status_problem(self.status, self.error, self.metrics)
        if problem:
            raise ResultsError(problem)

    @property
    def failed(self) -> bool:
        """The fit raised (``status == "failed"``): no metrics, the exception in ``error``."""
        return self.status == FAILED

    def as_failed(self, exc: BaseException, step: int | None = None) -> RunResults:
        """A copy of this record as that of a run that raised ``exc`` at global step ``step``: status
        ``"failed"``, ``error_record(exc, step)``, no metrics, ROC curves or mean accuracy."""
        return dataclasses.replace(
            self,
            status=FAILED,
            error=error_record(exc, step),
            metrics={},
            roc={},
            mean_accuracy=None,
            eval_protocol=None,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "results") -> RunResults:
        """A record from a mapping; unknown keys, missing required keys or wrong types name ``source``."""
        known = {f.name for f in dataclasses.fields(cls)} - {"path"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ResultsError(f"{source}: unknown keys {unknown} (known: {sorted(known)})")
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [key for key in required if key not in data]
        if missing:
            raise ResultsError(f"{source}: missing keys {missing}")
        if not isinstance(data["metrics"], Mapping):
            raise ResultsError(f"{source}: 'metrics' must map set names to metric objects")
        for key in ("method", "dataset", "student"):
            if not isinstance(data[key], str):
                raise ResultsError(f"{source}: {key!r} must be a string, got {data[key]!r}")
        if isinstance(data["seed"], bool) or not isinstance(data["seed"], int):
            raise ResultsError(f"{source}: 'seed' must be an integer, got {data['seed']!r}")
        problem = _status_problem(data.get("status", FINISHED), data.get("error"), data["metrics"])
        if problem:
            raise ResultsError(f"{source}: {problem}")
        order = data.get("order", DEFAULT_ORDER)
        if isinstance(order, bool) or not isinstance(order, (int, float)):
            raise ResultsError(f"{source}: 'order' must be a number, got {order!r}")
        return cls(**{**data, "order": float(order)})

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written to disk (``format`` first, ``path`` left out)."""
        data = dataclasses.asdict(self)
        data.pop("path")
        return {"format": data.pop("format"), **data}


class ResultsError(ValueError):
    """A results file that is missing, unreadable or not in the expected format."""


def _status_problem(status: Any, error: Any, metrics: Mapping[str, Any]) -> str | None:
    """What is wrong with a record's ``status`` / ``error`` / ``metrics`` combination (None: nothing)."""
    if status not in STATUSES:
        return f"unknown status {status!r} (known: {', '.join(STATUSES)})"
    if error is not None and not isinstance(error, Mapping):
        return f"'error' must be an object or null, got {error!r}"
    if status == FAILED:
        if error is None:
            return "a failed run needs its 'error'"
        if metrics:
            # a table would otherwise average numbers of a run that never finished
            return f"a failed run has no metrics, got sets {sorted(metrics)}"
    elif error is not None:
        return f"a finished run has no 'error' (got {dict(error)}); set status to 'failed'"
    return None


def error_record(exc: BaseException, step: int | None = None) -> dict[str, Any]:
    """The ``error`` entry of a failed run: exception class name, message and global step."""
    return {"type": type(exc).__name__, "message": str(exc), "step": None if step is None else int(step)}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class FinishedRunError(FileExistsError):
    """The output directory already holds a finished run."""


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


def write_results(directory: str | os.PathLike, results: RunResults) -> Path:
    """Write ``results`` as ``directory/results.json`` atomically; return the path."""
    if not isinstance(results, RunResults):
        raise TypeError(f"write_results takes a RunResults record, got {type(results).__name__}")
    # fields may have been set after construction: never write what load_results would refuse
    problem = _status_problem(results.status, results.error, results.metrics)
    if problem:
        raise ResultsError(f"not writing {Path(directory) / RESULTS_FILE}: {problem}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / RESULTS_FILE
    text = json.dumps(_json_ready(results.to_dict()), indent=2, sort_keys=False, allow_nan=False)
    fd, tmp = tempfile.mkstemp(prefix=".results.", suffix=".json.tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text + "\n")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be read by the whole group
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _upgrade_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A format-1 record as format 2: the row's label, order and paper row from the method file of the
    same name that ships with ekd (conf/distill; format 1 did not record them); results.json files of
    format 2 carry their own, so reading them never needs a method file."""
    from omegaconf import OmegaConf

    from ekd.config.paths import CONF_DIR

    method = data.get("method")
    row: dict[str, Any] = {}
    if method == "teacher":
        row = {"label": "teacher", "order": 0.0, "paper_row": "ResNet50 (teacher)"}
    else:
        path = CONF_DIR / "distill" / f"{method}.yaml"
        if path.is_file():
            node = OmegaConf.load(path)
            row = {key: node.get(key) for key in ("label", "order", "paper_row") if key in node}
    return {**row, **data, "format": FORMAT}


def load_results(path: str | os.PathLike) -> RunResults:
    """Read one results file (a path to the file or to its run directory) and check it against the schema."""
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
    if data.get("format") == FORMAT_V1:
        data = _upgrade_v1(data)
    if data.get("format") != FORMAT:
        raise ResultsError(
            f"{path}: format is {data.get('format')!r}, expected {FORMAT!r} (or {FORMAT_V1!r})"
        )
    results = RunResults.from_dict(data, source=str(path))
    results.path = str(path)
    return results


def git_commit(root: Path | None) -> str | None:
    """``git rev-parse HEAD`` of the source tree at ``root`` (``+dirty`` with local changes); None
    outside a git checkout (e.g. ekd installed from a wheel)."""
    if root is None:
        return None
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


def library_versions() -> dict[str, str]:
    """Versions of ekd, torch, Lightning, numpy, Pillow (which encodes and decodes the images) and
    Python (recorded with every run)."""
    import numpy
    import PIL
    import pytorch_lightning
    import torch

    import ekd

    return {
        "ekd": ekd.__version__,
        "torch": torch.__version__,
        "pytorch_lightning": pytorch_lightning.__version__,
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
        "python": sys.version.split()[0],
    }


def cpu_name(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> str:
    """The CPU's model name, with family and model numbers where ``cpuinfo`` gives them (a virtual
    machine may report just "AMD EPYC"); ``platform.processor()`` where there is no such file."""
    import platform

    fields: dict[str, str] = {}
    try:
        with open(cpuinfo) as handle:
            for line in handle:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown"
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def machine_record() -> dict[str, Any]:
    """The hardware a run ran on: CPU model, the instruction set torch's CPU kernels use (e.g.
    ``AVX2``, ``AVX512``), logical CPUs, and the CUDA device's name (None without one)."""
    import torch

    return {
        "cpu": cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpus": os.cpu_count(),
        "accelerator": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


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


def collect_results(paths: Iterable[str | os.PathLike]) -> list[RunResults]:
    """Load every results file under ``paths`` (see :func:`find_results`)."""
    paths = list(paths)
    files = find_results(paths)
    if not files:
        raise ResultsError(f"no {RESULTS_FILE} found under {', '.join(str(p) for p in paths)}")
    return [load_results(f) for f in files]
