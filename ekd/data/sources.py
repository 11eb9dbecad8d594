"""Training-data sources: the registry ``DATA_SOURCES`` behind ``FaceDataModule(source=...)``.

A data source knows where a training set lives, how to build its dataset and which verification
sets go with it by default. Built in:

- ``"rec"``: insightface ``train.rec`` / ``train.idx`` / ``property`` in ``root``
  (:class:`~ekd.data.datasets.FaceRecordDataset`); default verification sets: the known public
  ``.bin`` sets (lfw, cfp_fp, ...) present in ``root``;
- ``"folder"``: one sub-folder of images per identity (:class:`~ekd.data.datasets.FaceFolderDataset`);
  same default sets;
- ``"synthetic"``: the synthetic identity benchmark (``ekd/data/synthetic.py``) in ``root`` (default:
  a cache folder keyed by the generator arguments); default sets: ``synth_frontal``, ``synth_pose``,
  ``synth_age``. See :class:`SyntheticSource` for when it generates and which arguments it uses.

A user's source is a :class:`DataSource` subclass (or any factory returning one) registered from the
user's own module; ``FaceDataModule(source="mine", root=..., source_options={...})`` then calls
``factory(root=root, **source_options)`` (options checked against its signature)::

    from ekd.data import DataSource, register_data_source

    @register_data_source("mine")
    class MySource(DataSource):
        def build_dataset(self, flip: bool) -> Dataset:
            return MyFaces(self.root, flip=flip)

The dataset a source builds must have ``labels`` (1-D int array, one label per sample, known without
decoding images) and ``num_classes``, accept the sampler's keys (an index, or an ``(index, flip)`` pair)
and return ``(image, label)`` samples: either a uint8 3 x 112 x 112 RGB image as stored, which
``ekd.data.batch.normalise_batch`` mirrors (where the key says flip) and normalises per batch on the
device (the fast path, what the built-in datasets do), or a float image already normalised as in the
Images contract of ARCHITECTURE.md and mirrored as the key says.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ekd.data.bins import KNOWN_BIN_SETS
from ekd.data.datasets import FaceFolderDataset, FaceRecordDataset
from ekd.data.errors import DataError
from ekd.data.synthetic import (
    GENERATOR_VERSION,
    METADATA_FILE,
    VERIFICATION_SETS,
    SyntheticConfig,
    as_synthetic_config,
    describe_config,
    foreign_folder_problem,
    given_synthetic_fields,
    read_synthetic_metadata,
    write_synthetic,
)
from ekd.registry import Registry

log = logging.getLogger(__name__)


class DataSource:
    """A training set and its default verification sets; subclass it and override :meth:`build_dataset`.

    Args:
        root: the data folder (DataError when None: only sources with a default folder may omit it).
    """

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        if root is None:
            raise DataError(f"{type(self).__name__} needs root (the data folder)")
        self.root = Path(root)

    def ready(self) -> bool:
        """True when the data is in place (False: :meth:`prepare` must run before :meth:`build_dataset`)."""
        return True

    def prepare(self) -> None:
        """Download or generate the data (once, on rank 0 under Lightning's ``prepare_data``)."""

    def build_dataset(self, flip: bool) -> Dataset:
        """The training dataset; ``flip``: whether the sampler asks for horizontal flips."""
        raise NotImplementedError(f"{type(self).__name__} does not implement build_dataset")

    def default_val_sets(self) -> list[str]:
        """Verification sets used when the datamodule is given none: names (``root/<name>.bin``) or paths."""
        return [name for name in KNOWN_BIN_SETS if (self.root / f"{name}.bin").is_file()]


DATA_SOURCES: Registry[Callable[..., DataSource]] = Registry("data source")


def register_data_source(name: str) -> Callable[[Callable[..., DataSource]], Callable[..., DataSource]]:
    """Decorator registering a :class:`DataSource` factory under ``name`` (see the module docstring)."""
    return DATA_SOURCES.register(name)


def list_data_sources() -> list[str]:
    """Names of the registered data sources."""
    return DATA_SOURCES.names()


def create_data_source(name: str, root: str | os.PathLike | None = None, **options: Any) -> DataSource:
    """The data source ``name`` for ``root``; an unknown name or option raises an error listing the known."""
    source = DATA_SOURCES.create(name, root=root, **options)
    if not isinstance(source, DataSource):
        raise DataError(
            f"data source {name!r}: its factory returned {type(source).__name__}, expected a DataSource"
        )
    return source


@register_data_source("rec")
class RecordSource(DataSource):
    """insightface RecordIO: ``root/train.rec``, ``train.idx``, ``property``."""

    def build_dataset(self, flip: bool) -> Dataset:
        return FaceRecordDataset(self.root, flip=flip)


@register_data_source("folder")
class FolderSource(DataSource):
    """An image folder with one sub-folder per identity."""

    def build_dataset(self, flip: bool) -> Dataset:
        return FaceFolderDataset(self.root, flip=flip)


def default_synthetic_root(config: SyntheticConfig) -> Path:
    """Cache folder of a generated benchmark: ``$EKD_DATA_DIR`` (default ``~/.cache/ekd``)/synthetic-<hash>
    of the generator arguments (``pair_images`` only when set: the folders of benchmarks made before that
    argument existed keep their names)."""
    arguments = {name: value for name, value in config.__dict__.items() if name != "pair_images"}
    if config.pair_images:
        arguments["pair_images"] = config.pair_images
    key = json.dumps({"v": GENERATOR_VERSION, **arguments}, sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return Path(os.environ.get("EKD_DATA_DIR", "~/.cache/ekd")).expanduser() / f"synthetic-{digest}"


@contextlib.contextmanager
def generation_lock(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``.<root name>.lock`` beside ``root`` (created, and kept: removing a lock
    file that another process may hold open would let two processes lock different files). Where the
    platform or file system has no ``flock`` the block runs unlocked, with a warning."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        log.warning("no file locks on this platform: do not prepare %s from two processes at once", root)
        yield
        return
    lock_path = root.parent / f".{root.name}.lock"
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path, "a")  # noqa: SIM115 (closed below, after the unlock)
    except OSError as err:  # a read-only parent: generation reports its own error
        log.warning("cannot create the lock file %s (%s): preparing %s unlocked", lock_path, err, root)
        yield
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process to finish generating %s (lock %s)", root, lock_path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as err:  # e.g. ENOLCK on a file system without locks
            log.warning("cannot lock %s (%s): preparing %s unlocked", lock_path, err, root)
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@register_data_source("synthetic")
class SyntheticSource(DataSource):
    """The synthetic identity benchmark in ``root``.

    Args:
        root: data folder; default: :func:`default_synthetic_root` of the generator arguments.
        config: the generator arguments, a :class:`~ekd.data.synthetic.SyntheticConfig` (all its fields
            count as given) or a mapping of some of its fields (a key counts as given unless its value
            is None, as in :class:`~ekd.data.synthetic.SyntheticSettings`); None gives none.

    Rules:

    - ``root`` holds a generated benchmark (``synthetic.json``, as ``ekd-data synth`` writes it): its
      recorded arguments are used (:attr:`config`); a given argument that differs from the recorded
      one is a DataError naming both sets of values, so a mistyped config never trains on other data.
    - ``root`` is missing or empty: the benchmark is generated there (:meth:`prepare`) with the given
      arguments, the defaults of :class:`~ekd.data.synthetic.SyntheticConfig` for the others, and a
      log line naming the folder and the arguments.
    - ``root`` holds anything else (a mistyped path, real data): a DataError naming the folder and
      what it contains; nothing is generated next to those files.
    - Processes that prepare the same ``root`` at once (a parallel sweep on a fresh cache) take turns
      on a lock file beside it (``.<root name>.lock``, ``fcntl.flock``): one generates, the others wait
      and then read its benchmark.
    """

    def __init__(
        self, root: str | os.PathLike | None = None, config: SyntheticConfig | Mapping[str, Any] | None = None
    ) -> None:
        self.requested: SyntheticConfig = as_synthetic_config(config)  # validated; defaults when None
        self.given: tuple[str, ...] = given_synthetic_fields(config)
        super().__init__(default_synthetic_root(self.requested) if root is None else root)
        self._recorded: tuple[SyntheticConfig, dict[str, Any]] | None = None

    def _read_recorded(self) -> tuple[SyntheticConfig, dict[str, Any]] | None:
        # Read until found: another process (rank 0) may generate the benchmark meanwhile; once found
        # it does not change under a run.
        if self._recorded is None:
            self._recorded = read_synthetic_metadata(self.root)
        return self._recorded

    @property
    def config(self) -> SyntheticConfig:
        """The generator arguments of the data: the recorded ones once ``root`` holds a benchmark,
        else those :meth:`prepare` generates with (given, defaults for the rest)."""
        recorded = self._read_recorded()
        return recorded[0] if recorded is not None else self.requested

    def ready(self) -> bool:
        return self._read_recorded() is not None

    def _check_given(self, recorded: SyntheticConfig) -> None:
        """DataError when an argument given to this source differs from the recorded one."""
        diff = [name for name in self.given if getattr(recorded, name) != getattr(self.requested, name)]
        if not diff:
            return
        given = ", ".join(f"{name}={getattr(self.requested, name)}" for name in self.given)
        differences = "; ".join(
            f"{name}: {getattr(recorded, name)} recorded, {getattr(self.requested, name)} given"
            for name in diff
        )
        raise DataError(
            f"{self.root / METADATA_FILE}: the synthetic benchmark in {self.root} was generated with other "
            f"arguments ({differences}). Recorded: {describe_config(recorded)}. Given: {given}. To train on "
            "the data in this folder drop the synthetic config (ekd-train: remove the data.synthetic "
            "overrides, or pass data.synthetic=null); to train on data with the given arguments choose "
            "another root (an empty or new folder, where it is generated)"
        )

    def prepare(self) -> None:
        """Generate the benchmark into a missing or empty ``root``; check the arguments of one already there.

        A non-empty ``root`` without a generated benchmark is a DataError naming the folder and its files.
        """
        if self._read_recorded() is not None:
            self._prepare_locked()
            return
        with generation_lock(self.root):
            self._recorded = None  # another process may have generated it while this one waited
            self._prepare_locked()

    def _prepare_locked(self) -> None:
        recorded = self._read_recorded()
        if recorded is not None:
            config, meta = recorded
            self._check_given(config)
            version = meta.get("generator_version")
            if version != GENERATOR_VERSION:
                log.warning(
                    "%s: synthetic benchmark made by generator version %s (this ekd generates version %s for "
                    "the same arguments); using the data in the folder as it is",
                    self.root, version, GENERATOR_VERSION,
                )  # fmt: skip
            return
        problem = foreign_folder_problem(self.root)
        if problem is not None:
            raise DataError(f"synthetic data source: {problem}")
        log.info(
            "generating the synthetic benchmark into %s (%s)", self.root, describe_config(self.requested)
        )
        start = time.perf_counter()
        write_synthetic(self.root, self.requested)
        log.info("synthetic benchmark written to %s in %.1f s", self.root, time.perf_counter() - start)

    def build_dataset(self, flip: bool) -> Dataset:
        recorded = self._read_recorded()
        if recorded is None:
            problem = foreign_folder_problem(self.root)
            raise DataError(
                f"synthetic data source: {problem}"
                if problem is not None
                else f"{self.root}: no synthetic benchmark generated there yet (prepare() generates it)"
            )
        self._check_given(recorded[0])
        return FaceRecordDataset(self.root, flip=flip)

    def default_val_sets(self) -> list[str]:
        recorded = self._read_recorded()
        kinds = recorded[1].get("verification_sets", VERIFICATION_SETS) if recorded else VERIFICATION_SETS
        return [f"synth_{kind}" for kind in kinds]
