"""The run folder: one run per folder, a lock against two live jobs, and what ``resume`` may continue.

A run folder holds one run and only one (``ekd-train`` writes ``config.yaml``, ``checkpoints/last.ckpt``,
``backbone.pth``, ``results.json`` there). :func:`folder_state` reads what a folder holds:

- ``"empty"``: nothing of a run (a missing folder, or one without any of the files above);
- ``"finished"``: a ``results.json`` of a finished run;
- ``"interrupted"``: a run's config or checkpoint but no results (a signal, a preemption), or the
  ``results.json`` of a run that failed (``status: failed``): ``resume=auto`` continues it;
- ``"running"``: a live lock (below).

:class:`RunLock` is the lock file ``.ekd.lock`` (JSON: host, process id, start time, heartbeat time),
created with ``O_CREAT | O_EXCL`` so that two jobs cannot both take it, also across nodes on a shared
file system, and refreshed by a heartbeat thread every ``heartbeat_s`` seconds. A lock is stale, and is
taken over with a warning, when its process is gone (same host) or its heartbeat is older than
``stale_after_s`` (another host: a job killed with SIGKILL or a node that died).

:func:`check_resume_compatible` compares the config of the run to resume with the new one: keys that
change what the run is (method, seed, data, model, optimiser, schedule, batch, anything the learning
rate schedule depends on) must be equal; only the keys of :data:`MAY_CHANGE_ON_RESUME` may differ.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOCK_FILE = ".ekd.lock"
CONFIG_FILE = "config.yaml"
LAST_CHECKPOINT = "checkpoints/last.ckpt"
BACKBONE_FILE = "backbone.pth"  # with backbone.json beside it (ekd.models.write_backbone_record)
RUN_FILES = (CONFIG_FILE, LAST_CHECKPOINT, BACKBONE_FILE, "results.json")

# Keys (dotted prefixes) of the resolved config that may differ between a run and its resumption: where
# files are, how the run is watched, how it is evaluated at the end, and how data is loaded (not which).
MAY_CHANGE_ON_RESUME: tuple[str, ...] = (
    "resume",
    "trust_pickle",
    "overwrite",
    "imports",
    "output_dir",
    "run_group",
    "logger",
    "callbacks",
    "eval",
    "benchmark",
    "data.root",
    "data.num_workers",
    "data.pin_memory",
    "data.persistent_workers",
    "teacher.checkpoint",
    "distill.teacher_cache",
    "distill.prototype_cache",
    "trainer.log_every_n_steps",
    "trainer.enable_model_summary",
)


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (it holds another run, a live lock, a changed config)."""


def folder_state(directory: str | os.PathLike, lock_stale_after_s: float = 600.0) -> str:
    """What ``directory`` holds: ``"empty"``, ``"finished"``, ``"interrupted"`` or ``"running"``."""
    directory = Path(directory)
    lock = RunLock(directory, stale_after_s=lock_stale_after_s)
    if lock.holder() is not None and not lock.is_stale():
        return "running"
    if (directory / "results.json").is_file():
        from ekd.report import ResultsError, load_results

        try:
            failed = load_results(directory).failed
        except ResultsError:  # not known to be a failure: a run was there, treat it as finished
            failed = False
        return "interrupted" if failed else "finished"
    if any((directory / name).exists() for name in RUN_FILES):
        return "interrupted"
    return "empty"


class RunLock:
    """The lock file of a run folder (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike, heartbeat_s: float = 30.0, stale_after_s: float = 600.0):
        self.path = Path(directory) / LOCK_FILE
        self.heartbeat_s = float(heartbeat_s)
        self.stale_after_s = float(stale_after_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._record: dict[str, Any] | None = None

    def holder(self) -> dict[str, Any] | None:
        """The lock's record ({host, pid, started, heartbeat}), None when there is no lock file."""
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # being written, or garbage: treat as held, with no known owner
            return {"host": "?", "pid": -1, "started": 0.0, "heartbeat": self._mtime()}

    def _mtime(self) -> float:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return 0.0

    def is_stale(self, record: Mapping[str, Any] | None = None) -> bool:
        """True when the holder is gone: its process died (same host) or its heartbeat stopped."""
        record = self.holder() if record is None else record
        if record is None:
            return True
        if record.get("host") == socket.gethostname() and not _process_alive(int(record.get("pid", -1))):
            return True
        return time.time() - float(record.get("heartbeat", 0.0)) > self.stale_after_s

    def acquire(self) -> None:
        """Take the lock (RunFolderError when a live job holds it) and start the heartbeat."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        now = time.time()
        self._record = {"host": socket.gethostname(), "pid": os.getpid(), "started": now, "heartbeat": now}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                record = self.holder()
                if record is not None and not self.is_stale(record):
                    raise RunFolderError(
                        f"{self.path.parent} is in use by a running job (lock {self.path}: host "
                        f"{record.get('host')}, pid {record.get('pid')}, last heartbeat "
                        f"{time.time() - float(record.get('heartbeat', 0.0)):.0f} s ago); give this run "
                        "another folder"
                    ) from None
                log.warning("taking over the stale lock %s (%s)", self.path, record)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(self._record, handle)
            break
        else:  # pragma: no cover - another job took the stale lock between our two attempts
            raise RunFolderError(f"{self.path.parent}: another job took the lock {self.path} first")
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="ekd-run-lock", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            assert self._record is not None
            self._record["heartbeat"] = time.time()
            tmp = self.path.with_name(f"{LOCK_FILE}.{os.getpid()}.tmp")
            try:
                tmp.write_text(json.dumps(self._record))
                os.replace(tmp, self.path)
            except OSError as error:  # a full disk must not kill the training run; the lock may go stale
                log.warning("cannot refresh the run lock %s: %s", self.path, error)

    def release(self) -> None:
        """Stop the heartbeat and remove the lock (if it is still ours)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        record = self.holder()
        if (
            record is not None
            and record.get("pid") == os.getpid()
            and record.get("host") == socket.gethostname()
        ):
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): node}


def changed_keys(
    before: Mapping[str, Any], after: Mapping[str, Any], may_change: Iterable[str] = MAY_CHANGE_ON_RESUME
) -> list[str]:
    """Dotted keys whose values differ between two resolved configs, except those under ``may_change``."""
    old, new = _flatten(before), _flatten(after)
    allowed = tuple(may_change)

    def free(key: str) -> bool:
        return any(key == prefix or key.startswith(prefix + ".") for prefix in allowed)

    return sorted(key for key in set(old) | set(new) if not free(key) and old.get(key) != new.get(key))


def check_resume_compatible(before: Mapping[str, Any], after: Mapping[str, Any], source: str) -> None:
    """RunFolderError listing the keys that would change what the run is (``source``: the old config)."""
    changed = changed_keys(before, after)
    if changed:
        old, new = _flatten(before), _flatten(after)
        listing = "; ".join(f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in changed[:12])
        more = f" (and {len(changed) - 12} more)" if len(changed) > 12 else ""
        raise RunFolderError(
            f"cannot resume the run of {source}: the new config changes what the run is: {listing}{more}. "
            "Resume with the same config (only where files are, logging, callbacks and the final "
            "evaluation may change; docs/reliability.md), or start a new run in another folder"
        )


# what overwrite=true removes before a new run starts in a used folder (its logs would mix otherwise)
REPLACED_ON_OVERWRITE = ("results.json", CONFIG_FILE, BACKBONE_FILE, "backbone.json", "checkpoints", "csv")


@dataclasses.dataclass
class RunStart:
    """How a run starts in its folder: from scratch or from ``ckpt_path``; ``lock`` is held by rank zero;
    ``finished``: ``resume=auto`` found a finished run (nothing to do)."""

    ckpt_path: str | None = None
    lock: RunLock | None = None
    finished: bool = False


def prepare_run_folder(
    directory: str | os.PathLike,
    config: Mapping[str, Any],
    resume: str | None,
    overwrite: bool,
    fixed_folder: bool,
    rank: int = 0,
) -> RunStart:
    """Decide how the run with resolved ``config`` starts in ``directory``, and on rank zero take its lock.

    - no ``resume``: the folder must hold no run ("empty"); ``overwrite=true`` replaces a finished or
      interrupted one (its files are removed first); a running one is always refused;
    - ``resume="auto"``: needs a folder the user fixed (``hydra.run.dir`` / ``hydra.sweep.dir``); a
      finished run is left alone, an interrupted one continues from ``checkpoints/last.ckpt`` (fresh
      when there is none), an empty folder starts fresh;
    - ``resume=<file>``: continue from that checkpoint, in whatever folder is given.

    A resumed run must have the same config as the one it continues (:func:`check_resume_compatible`
    against ``config.yaml``). Errors are :class:`RunFolderError` naming the folder; ranks > 0 only read.
    """
    directory = Path(directory)
    state = folder_state(directory)
    last = directory / LAST_CHECKPOINT
    start = RunStart()
    if state == "running" and rank == 0:
        RunLock(directory).acquire()  # raises, naming the live job
    if resume is None:
        if state != "empty" and rank == 0:
            if not overwrite:
                from ekd.report import FinishedRunError

                error = FinishedRunError if state == "finished" else RunFolderError
                what = (
                    f"a finished run ({directory / 'results.json'})"
                    if state == "finished"
                    else "an interrupted run"
                )
                raise error(
                    f"{directory} holds {what}: continue it with resume=auto, replace it with "
                    "overwrite=true, or give this run another folder"
                )
            _remove_run_files(directory)
    elif str(resume) == "auto":
        if not fixed_folder:
            raise RunFolderError(
                "resume=auto continues the run in a folder you name: give it with hydra.run.dir=DIR "
                "(hydra.sweep.dir=DIR for a multirun); without it every run gets a new folder"
            )
        if state == "finished":
            return RunStart(finished=True)
        start.ckpt_path = str(last) if last.is_file() else None
    else:
        if not Path(resume).is_file():
            raise RunFolderError(f"resume={resume}: no such checkpoint file")
        start.ckpt_path = str(resume)
    if start.ckpt_path is not None and (directory / CONFIG_FILE).is_file():
        from omegaconf import OmegaConf

        before = OmegaConf.to_container(OmegaConf.load(directory / CONFIG_FILE), resolve=False)
        check_resume_compatible(before, config, str(directory / CONFIG_FILE))
    if rank == 0:
        try:
            start.lock = RunLock(directory)
            start.lock.acquire()
        except OSError as error:
            raise RunFolderError(f"cannot write to the run folder {directory}: {error}") from error
    return start


def _remove_run_files(directory: Path) -> None:
    import shutil

    for name in REPLACED_ON_OVERWRITE:
        path = directory / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
