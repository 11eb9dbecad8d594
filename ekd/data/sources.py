"""Training-data sources: the registry ``DATA_SOURCES`` behind ``FaceDataModule(source=...)``.

A data source knows where a training set lives, how to build its dataset and which verification
sets go with it by default. Built in:

- ``"rec"``: insightface ``train.rec`` / ``train.idx`` / ``property`` in ``root``
  (:class:`~ekd.data.datasets.FaceRecordDataset`); default verification sets: the known public
  ``.bin`` sets (lfw, cfp_fp, ...) present in ``root``;
- ``"folder"``: one sub-folder of images per identity (:class:`~ekd.data.datasets.FaceFolderDataset`);
  same default sets;
- ``"synthetic"``: the synthetic identity benchmark (``ekd/data/synthetic.py``), generated into
  ``root`` (default: a cache folder keyed by the generator arguments) when it lacks ``train.rec``;
  default sets: ``synth_frontal``, ``synth_pose``, ``synth_age``.

A user's source is a :class:`DataSource` subclass (or any factory returning one) registered from the
user's own module; ``FaceDataModule(source="mine", root=..., source_options={...})`` then calls
``factory(root=root, **source_options)`` (options checked against its signature)::

    from ekd.data import DataSource, register_data_source

    @register_data_source("mine")
    class MySource(DataSource):
        def build_dataset(self, flip: bool) -> Dataset:
            return MyFaces(self.root, flip=flip)

The dataset a source builds must have ``labels`` (1-D int array, one label per sample, known without
decoding images) and ``num_classes``, accept the sampler's keys (an index, or an ``(index, flip)`` pair
whose flip it applies as given) and return ``(image, label)`` samples (images as in the Images
contract of ARCHITECTURE.md).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ekd.data.bins import KNOWN_BIN_SETS
from ekd.data.datasets import FaceFolderDataset, FaceRecordDataset
from ekd.data.errors import DataError
from ekd.data.synthetic import (
    GENERATOR_VERSION,
    VERIFICATION_SETS,
    SyntheticConfig,
    as_synthetic_config,
    write_synthetic,
)
from ekd.registry import Registry


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
    of the generator arguments."""
    key = json.dumps({"v": GENERATOR_VERSION, **config.__dict__}, sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return Path(os.environ.get("EKD_DATA_DIR", "~/.cache/ekd")).expanduser() / f"synthetic-{digest}"


@register_data_source("synthetic")
class SyntheticSource(DataSource):
    """The synthetic identity benchmark, generated into ``root`` when it lacks ``train.rec``.

    Args:
        root: data folder; default: :func:`default_synthetic_root` of the generator arguments.
        config: a :class:`~ekd.data.synthetic.SyntheticConfig` or a mapping of its fields.
    """

    def __init__(
        self, root: str | os.PathLike | None = None, config: SyntheticConfig | Mapping[str, Any] | None = None
    ) -> None:
        self.config = as_synthetic_config(config)
        super().__init__(default_synthetic_root(self.config) if root is None else root)

    def ready(self) -> bool:
        return (self.root / "train.rec").is_file()

    def prepare(self) -> None:
        """Generate the benchmark unless ``root`` holds it; refuse one generated with other arguments."""
        meta_path = self.root / "synthetic.json"
        if (self.root / "train.rec").is_file():
            if meta_path.is_file():
                meta = json.loads(meta_path.read_text())
                wanted = {"generator_version": GENERATOR_VERSION, **self.config.__dict__}
                diff = {k: (meta.get(k), v) for k, v in wanted.items() if meta.get(k) != v}
                if diff:
                    raise DataError(
                        f"{meta_path}: the synthetic data in {self.root} was generated with other arguments "
                        f"(found vs requested: {diff}); use another root or delete that folder"
                    )
            return
        write_synthetic(self.root, self.config)

    def build_dataset(self, flip: bool) -> Dataset:
        return FaceRecordDataset(self.root, flip=flip)

    def default_val_sets(self) -> list[str]:
        return [f"synth_{kind}" for kind in VERIFICATION_SETS]
