"""Teacher embedding cache: the frozen teacher's embeddings of every training image, computed once.

Every distillation objective that needs only the teacher's embedding (or the logits derived from it,
``s cos(f^_t, W^_t)``) sees, at every step, a fixed function of (teacher weights, image). With
flip-only augmentation there are exactly two images per sample (as stored and mirrored), so the
teacher's forward pass, usually the largest cost of a distillation step (iresnet50: 6.3 GMACs per
image against 0.2-0.5 for the students), can be replaced by a table look-up. Objectives that read
stage feature maps (FitNet, stage-based ShrinkTeaNet) keep the online teacher: maps of 512 x 7 x 7
per image are far too large to store.

Layout of a cache folder (``ekd-cache build`` writes it, :class:`TeacherEmbeddingCache` reads it)::

    index.json                       format, key (dataset fingerprint + teacher SHA-256), provenance
    teacher_embeddings.npy           N x D float16, raw (un-normalised) teacher embedding of image i
    teacher_embeddings_flipped.npy   N x D float16, same for the horizontally flipped image i
    labels.npy                       N int64, the dataset's labels (a cheap consistency check)

The arrays are read memory-mapped, so a cache of MS1MV2 (5.8M images x 512 x 2 B x 2 = 12 GB)
costs no resident memory beyond the pages a batch touches. ``index.json`` is written last (atomically):
a folder without it is an unfinished build and is refused.

Key. A cache is valid for one teacher file (its SHA-256) and one dataset, identified by
:func:`ekd.data.dataset_fingerprint` (``ekd/data/fingerprint.py``): for RecordIO the SHA-256 of the
``.idx`` file, the number of samples, the ``.rec`` size, the ``property`` file and the labels; for an
image folder the SHA-256 of the sorted list of (relative path, label). Image bytes are not hashed
(hundreds of GB): an edit that keeps every record's offset and label, or every file name, goes
unnoticed. Using a cache with another teacher or
dataset raises :class:`TeacherCacheMismatchError` naming both fingerprints.

Precision. float16 keeps 11 significant bits: the relative error of a stored value is at most
2^-11 (about 5e-4), so cosine similarities of cached embeddings differ from the online ones by about
1e-3 at most (the online teacher under bf16-mixed is coarser still). Values beyond the float16 range
(|x| > 65504) are refused at build time rather than stored as infinities.

Sharding. Samples are split into ``world_size`` contiguous ranges; every rank computes its range and
writes it into the shared memory-mapped files (disjoint rows, no locking needed). Under
``torch.distributed`` rank 0 creates the files and writes the index around two barriers; without a
process group the caller does both (``ekd-cache build --devices N`` spawns one process per GPU).
"""

from __future__ import annotations

import datetime as _datetime
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ekd.data.batch import normalise_batch
from ekd.data.fingerprint import cache_unusable_reason, dataset_fingerprint
from ekd.dist import shard_bounds

CACHE_FORMAT = "ekd.teacher_cache/1"
INDEX_FILE = "index.json"
EMBEDDINGS_FILE = "teacher_embeddings.npy"
FLIPPED_FILE = "teacher_embeddings_flipped.npy"
LABELS_FILE = "labels.npy"
BUILDING_MARKER = ".building"
FLOAT16_MAX = float(np.finfo(np.float16).max)

log = logging.getLogger(__name__)


class TeacherCacheError(ValueError):
    """A teacher cache folder that cannot be used (missing, unfinished, malformed)."""


class TeacherCacheMismatchError(TeacherCacheError):
    """A cache built for another teacher file or another dataset."""


# ---------------------------------------------------------------------------------- dataset checks
def dataset_description(dataset: Dataset) -> dict[str, Any]:
    """Kind, root, sample and class counts of a training set (stored in the index for humans)."""
    from ekd.data.datasets import FaceFolderDataset

    return {
        "kind": "folder" if isinstance(dataset, FaceFolderDataset) else "rec",
        "root": str(Path(dataset.root).resolve()),  # type: ignore[attr-defined]
        "num_images": len(dataset),  # type: ignore[arg-type]
        "num_classes": int(dataset.num_classes),  # type: ignore[attr-defined]
    }


def stage_feature_users(objectives: Mapping[str, nn.Module]) -> list[str]:
    """Keys of the objectives that read stage feature maps (they need the online teacher)."""
    return sorted(
        key
        for key, objective in objectives.items()
        if any(field.startswith("stages") for field in getattr(objective, "requires", ()))
    )


# ------------------------------------------------------------------------------------------ building
def prepare_cache(
    output: str | os.PathLike,
    num_images: int,
    embedding_size: int,
    labels: np.ndarray,
    overwrite: bool = False,
) -> Path:
    """Create ``output`` with zero-filled memory-mapped arrays and the in-progress marker.

    A folder holding a finished cache (``index.json``) is refused unless ``overwrite``; other files in
    the folder are left alone, an unfinished build's arrays are replaced.
    """
    out = Path(output)
    index = out / INDEX_FILE
    if index.exists() and not overwrite:
        raise TeacherCacheError(
            f"{index} exists: {out} already holds a finished teacher cache; choose another output or pass "
            "--overwrite to rebuild it"
        )
    if num_images < 1 or embedding_size < 1:
        raise TeacherCacheError(f"cannot build a cache of {num_images} images x {embedding_size} dimensions")
    out.mkdir(parents=True, exist_ok=True)
    if index.exists():
        index.unlink()  # from here on the folder is an unfinished build
    (out / BUILDING_MARKER).write_text(f"started {_now()}\n")
    for name in (EMBEDDINGS_FILE, FLIPPED_FILE):
        array = np.lib.format.open_memmap(
            out / name, mode="w+", dtype=np.float16, shape=(num_images, embedding_size)
        )
        array.flush()
        del array
    np.save(out / LABELS_FILE, np.asarray(labels, dtype=np.int64))
    return out


def _keyed_batches(start: int, end: int, batch_size: int) -> list[list[tuple[int, bool]]]:
    # (index, False) keys: the dataset returns the image as stored, never a random flip
    return [[(i, False) for i in range(b, min(b + batch_size, end))] for b in range(start, end, batch_size)]


@torch.no_grad()
def fill_cache_shard(
    teacher: nn.Module,
    dataset: Dataset,
    output: str | os.PathLike,
    rank: int = 0,
    world_size: int = 1,
    batch_size: int = 256,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    precision: str = "32",
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Compute the teacher embeddings of this rank's samples (plain and flipped) into a prepared cache.

    Returns the number of samples written. ``precision``: "32" (float32) or "bf16" (autocast on CUDA).
    ``progress(done, total)`` is called after every batch.
    """
    if precision not in ("32", "bf16"):
        raise ValueError(f"precision: expected '32' or 'bf16', got {precision!r}")
    reason = cache_unusable_reason(dataset)
    if reason is not None:
        raise TeacherCacheError(f"cannot build a teacher cache: {reason}")
    out = Path(output)
    plain = np.load(out / EMBEDDINGS_FILE, mmap_mode="r+")
    flipped = np.load(out / FLIPPED_FILE, mmap_mode="r+")
    start, end = shard_bounds(len(plain), world_size=world_size, rank=rank)
    device = torch.device(device)
    teacher = teacher.to(device).eval()
    if device.type == "cuda":
        teacher = teacher.to(memory_format=torch.channels_last)
    loader = DataLoader(
        dataset,
        batch_sampler=_keyed_batches(start, end, batch_size),
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    done = 0
    for batch in loader:
        # the training batches' device transform: the same normalised values the student's rows get
        images = normalise_batch(batch[0].to(device, non_blocking=True))
        both = torch.cat([images, images.flip(-1)])  # eval-mode BN: rows do not interact
        if device.type == "cuda":
            both = both.contiguous(memory_format=torch.channels_last)
        with autocast:
            embeddings = teacher(both).float()
        n = images.shape[0]
        rows = slice(start + done, start + done + n)
        values = embeddings.cpu().numpy()
        too_big = ~np.isfinite(values) | (np.abs(values) > FLOAT16_MAX)
        if too_big.any():
            row = start + done + int(np.argwhere(too_big)[0][0]) % n
            raise TeacherCacheError(
                f"teacher embedding of sample {row} is non-finite or beyond the float16 range "
                f"(|x| > {FLOAT16_MAX})"
            )
        plain[rows] = values[:n]
        flipped[rows] = values[n:]
        done += n
        if progress is not None:
            progress(done, end - start)
    plain.flush()
    flipped.flush()
    return done


def finalize_cache(output: str | os.PathLike, index: dict[str, Any]) -> Path:
    """Write ``index.json`` atomically and drop the in-progress marker: the cache becomes usable."""
    out = Path(output)
    path = out / INDEX_FILE
    tmp = out / f".{INDEX_FILE}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    marker = out / BUILDING_MARKER
    if marker.exists():
        marker.unlink()
    return path


def make_index(
    dataset: Dataset,
    teacher_name: str,
    teacher_sha256: str,
    embedding_size: int,
    teacher_kwargs: Mapping[str, Any] | None = None,
    checkpoint: str | os.PathLike | None = None,
    shards: int = 1,
    build_seconds: float | None = None,
    precision: str = "32",
) -> dict[str, Any]:
    """The ``index.json`` content of a cache of ``dataset`` by the given teacher."""
    description = dataset_description(dataset)
    fingerprint = dataset_fingerprint(dataset)
    return {
        "format": CACHE_FORMAT,
        "dataset_fingerprint": fingerprint,
        "teacher_sha256": teacher_sha256,
        "dataset": {**description, "fingerprint": fingerprint},
        "teacher": {
            "name": teacher_name,
            "kwargs": dict(teacher_kwargs or {}),
            "checkpoint": None if checkpoint is None else str(Path(checkpoint).resolve()),
            "sha256": teacher_sha256,
            "embedding_size": int(embedding_size),
            "precision": precision,
        },
        "num_images": description["num_images"],
        "embedding_size": int(embedding_size),
        "dtype": "float16",
        "files": {"embeddings": EMBEDDINGS_FILE, "flipped": FLIPPED_FILE, "labels": LABELS_FILE},
        "shards": int(shards),
        "created": _now(),
        "build_seconds": None if build_seconds is None else round(float(build_seconds), 3),
    }


def build_teacher_cache(
    teacher: nn.Module,
    dataset: Dataset,
    output: str | os.PathLike,
    teacher_name: str,
    teacher_sha256: str,
    teacher_kwargs: Mapping[str, Any] | None = None,
    checkpoint: str | os.PathLike | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    precision: str = "32",
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Build a complete cache of ``dataset`` with ``teacher`` in ``output``; returns the index path.

    Under an initialised ``torch.distributed`` group every rank must call this (collective): each
    computes its shard, rank 0 creates the files and writes the index.
    """
    import torch.distributed as torch_dist

    from ekd import dist

    started = time.perf_counter()
    rank, world_size = dist.rank(), dist.world_size()
    embedding_size = int(getattr(teacher, "embedding_size", 0)) or _probe_dimension(teacher, dataset, device)
    failure: BaseException | None = None
    if rank == 0:
        try:
            prepare_cache(output, len(dataset), embedding_size, dataset.labels, overwrite=overwrite)  # type: ignore[attr-defined]
        except BaseException as err:  # every rank must reach the barrier; re-raised below
            failure = err
    _agree(failure, "preparing the cache files")
    try:
        fill_cache_shard(
            teacher, dataset, output, rank, world_size, batch_size, num_workers, device, precision, progress
        )
    except BaseException as err:
        failure = err
    _agree(failure, f"computing the embeddings (rank {rank})")
    path = Path(output) / INDEX_FILE
    if rank == 0:
        index = make_index(
            dataset,
            teacher_name,
            teacher_sha256,
            embedding_size,
            teacher_kwargs,
            checkpoint,
            shards=world_size,
            build_seconds=time.perf_counter() - started,
            precision=precision,
        )
        finalize_cache(output, index)
    if dist.is_distributed():
        torch_dist.barrier()
    return path


def _agree(failure: BaseException | None, what: str) -> None:
    """Raise on every rank when any rank failed (so that no rank waits forever at a barrier)."""
    from ekd import dist

    if dist.is_distributed():
        import torch.distributed as torch_dist

        flag = torch.tensor([0.0 if failure is None else 1.0])
        if torch_dist.get_backend() == "nccl":
            flag = flag.cuda()
        torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MAX)
        if failure is None and flag.item() > 0:
            raise TeacherCacheError(f"teacher cache build failed on another rank while {what}")
    if failure is not None:
        raise failure


@torch.no_grad()
def _probe_dimension(teacher: nn.Module, dataset: Dataset, device: torch.device | str) -> int:
    image = normalise_batch(dataset[(0, False)][0].unsqueeze(0).to(device))
    return int(teacher.to(device).eval()(image).shape[1])


def _now() -> str:
    return _datetime.datetime.now(_datetime.timezone.utc).isoformat(timespec="seconds")


# -------------------------------------------------------------------------------------------- reading
class TeacherEmbeddingCache:
    """A finished cache folder, memory-mapped; see the module docstring.

    Raises :class:`TeacherCacheError` for a missing, unfinished or malformed folder (naming the file).
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.index = read_index(self.directory)
        files = self.index["files"]
        self._plain = self._open(files["embeddings"])
        self._flipped = self._open(files["flipped"])
        labels_path = self.directory / files["labels"]
        try:
            self.labels = np.load(labels_path, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise TeacherCacheError(f"{labels_path}: cannot read the cached labels: {err}") from None
        if self.labels.shape != (self.num_images,):
            raise TeacherCacheError(
                f"{labels_path}: shape {self.labels.shape}, expected ({self.num_images},) as index.json says"
            )

    def _open(self, name: str) -> np.ndarray:
        path = self.directory / name
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise TeacherCacheError(f"{path}: cannot memory-map the cached embeddings: {err}") from None
        expected = (int(self.index["num_images"]), int(self.index["embedding_size"]))
        if array.dtype != np.float16 or array.shape != expected:
            raise TeacherCacheError(
                f"{path}: {array.dtype} array of shape {array.shape}, expected float16 {expected} as "
                "index.json says"
            )
        return array

    @property
    def num_images(self) -> int:
        return int(self.index["num_images"])

    @property
    def embedding_size(self) -> int:
        return int(self.index["embedding_size"])

    @property
    def teacher_sha256(self) -> str:
        return str(self.index["teacher_sha256"])

    @property
    def dataset_fingerprint(self) -> str:
        return str(self.index["dataset_fingerprint"])

    def verify_teacher(self, sha256: str, name: str | None = None, checkpoint: str | None = None) -> None:
        """Refuse a cache made from another teacher file (or another teacher architecture)."""
        if sha256 != self.teacher_sha256:
            what = f"teacher checkpoint {checkpoint!r}" if checkpoint else "the teacher checkpoint"
            raise TeacherCacheMismatchError(
                f"teacher cache {self.directory} was built with a teacher file of SHA-256 "
                f"{self.teacher_sha256} "
                f"({self.index['teacher'].get('checkpoint')}), but {what} has SHA-256 {sha256}; rebuild the "
                "cache with ekd-cache build or drop teacher_cache"
            )
        cached_name = self.index["teacher"].get("name")
        if name is not None and cached_name is not None and name != cached_name:
            raise TeacherCacheMismatchError(
                f"teacher cache {self.directory} was built with teacher {cached_name!r}, this run uses "
                f"{name!r}"
            )

    def verify_dataset(self, dataset: Dataset) -> None:
        """Refuse a cache made for another dataset (fingerprint) or with another sample count."""
        fingerprint = dataset_fingerprint(dataset)
        root = getattr(dataset, "root", "?")
        if fingerprint != self.dataset_fingerprint:
            raise TeacherCacheMismatchError(
                f"teacher cache {self.directory} was built for dataset fingerprint "
                f"{self.dataset_fingerprint} "
                f"({self.index['dataset'].get('root')}), but the training data {root} has fingerprint "
                f"{fingerprint}; rebuild the cache with ekd-cache build or drop teacher_cache"
            )
        if len(dataset) != self.num_images:  # type: ignore[arg-type]
            raise TeacherCacheMismatchError(
                f"teacher cache {self.directory} holds {self.num_images} images, the training data "
                f"{root} has {len(dataset)}"  # type: ignore[arg-type]
            )

    def lookup(
        self, indices: torch.Tensor | Iterable[int], flipped: torch.Tensor | Iterable[bool]
    ) -> torch.Tensor:
        """float32 N x D teacher embeddings (on CPU) of samples ``indices``, mirrored where ``flipped``."""
        idx = torch.as_tensor(indices).detach().cpu().numpy().astype(np.int64, copy=False).reshape(-1)
        flip = torch.as_tensor(flipped).detach().cpu().numpy().astype(bool, copy=False).reshape(-1)
        if idx.shape != flip.shape:
            raise ValueError(f"teacher cache lookup: {idx.size} indices but {flip.size} flip flags")
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_images):
            bad = int(idx[(idx < 0) | (idx >= self.num_images)][0])
            raise TeacherCacheError(
                f"teacher cache {self.directory}: sample index {bad} is outside [0, {self.num_images})"
            )
        out = np.empty((idx.size, self.embedding_size), dtype=np.float32)
        # each memory-mapped array is read only at the rows it contributes
        out[~flip] = self._plain[idx[~flip]]
        out[flip] = self._flipped[idx[flip]]
        return torch.from_numpy(out)

    def check_labels(self, indices: torch.Tensor, labels: torch.Tensor) -> None:
        """Raise when the batch's labels differ from the cached ones (indices from another dataset)."""
        idx = indices.detach().cpu().numpy().astype(np.int64, copy=False)
        cached = np.asarray(self.labels[idx])
        given = labels.detach().cpu().numpy()
        wrong = np.flatnonzero(cached != given)
        if wrong.size:
            i = int(wrong[0])
            raise TeacherCacheMismatchError(
                f"teacher cache {self.directory}: sample {int(idx[i])} has label {int(given[i])} in the "
                f"batch but {int(cached[i])} in the cache; the batch indices do not refer to the cached "
                "dataset"
            )


def read_index(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``index.json`` of a finished cache (TeacherCacheError naming the problem otherwise)."""
    directory = Path(directory)
    path = directory / INDEX_FILE
    if not directory.is_dir():
        raise TeacherCacheError(f"teacher cache {directory}: no such folder (build it with ekd-cache build)")
    if not path.is_file():
        if (directory / BUILDING_MARKER).exists():
            raise TeacherCacheError(
                f"teacher cache {directory} is unfinished (a build was interrupted: {BUILDING_MARKER} "
                f"present, {INDEX_FILE} missing); rebuild it with ekd-cache build"
            )
        raise TeacherCacheError(
            f"{path}: not found; {directory} is not a teacher cache (ekd-cache build writes one)"
        )
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise TeacherCacheError(f"{path}: not readable JSON: {err}") from None
    if not isinstance(index, dict) or index.get("format") != CACHE_FORMAT:
        found = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise TeacherCacheError(f"{path}: format {found!r}, expected {CACHE_FORMAT!r}")
    required = (
        "dataset_fingerprint",
        "teacher_sha256",
        "num_images",
        "embedding_size",
        "files",
        "teacher",
        "dataset",
    )
    missing = [key for key in required if key not in index]
    if missing:
        raise TeacherCacheError(f"{path}: lacks keys {missing}")
    return index


def describe_index(index: Mapping[str, Any]) -> str:
    """Human-readable summary of an index (``ekd-cache info``)."""
    teacher, data = index["teacher"], index["dataset"]
    lines = [
        f"format             {index['format']}",
        f"teacher            {teacher.get('name')} {teacher.get('kwargs') or ''}".rstrip(),
        f"teacher checkpoint {teacher.get('checkpoint')}",
        f"teacher sha256     {index['teacher_sha256']}",
        f"dataset            {data.get('kind')} {data.get('root')}",
        f"dataset fingerprint {index['dataset_fingerprint']}",
        f"images             {index['num_images']} ({data.get('num_classes')} classes), plain + flipped",
        f"embeddings         {index['embedding_size']}-d {index.get('dtype', 'float16')}, "
        f"computed in precision {teacher.get('precision', '32')}",
        f"built              {index.get('created')} in {index.get('build_seconds')} s over "
        f"{index.get('shards')} shard(s)",
    ]
    return "\n".join(lines)
