"""The training batch contract: :class:`FaceBatch`, what every training step receives.

A training batch is a ``FaceBatch`` (a dataclass; Lightning moves it to the device field by field,
and the DataLoader pins it through :meth:`FaceBatch.pin_memory`):

    images              N x 3 x 112 x 112: uint8 RGB as stored (not mirrored) from the loader, float
                        normalised (x - 127.5) / 127.5 and mirrored where flipped after the device
                        transform (:func:`normalise_batch`); float from a loader means already final
    labels              N int64 class labels
    indices             N int64 sample indices into the datamodule's ``dataset`` (or None)
    flipped             N bool, the row's image is the horizontal mirror of sample ``indices[i]`` (or None)
    teacher_embedding   N x D float32 raw teacher embedding of exactly the image of each row (or None)

Images travel as uint8 (a quarter of the bytes of float32, and no per-image float work on the host):
the datasets decode only, and flipping and normalisation run in one batch transform on the device,
:func:`normalise_batch` (``FaceDataModule.on_after_batch_transfer``; the training steps apply it too, so
a uint8 batch from any other loader is accepted, and it is a no-op on float images). The teacher cache
build and the teacher class prototypes use the same function.

``ekd.data.FaceDataModule``'s training loader always fills ``indices`` and ``flipped`` (the sampler
decides the flips), and fills ``teacher_embedding`` while a teacher embedding cache is attached
(:meth:`~ekd.data.FaceDataModule.attach_teacher_cache`; the look-up runs in the main process in
``on_before_batch_transfer``, so the embeddings travel to the device with the batch). Training steps
read batches through :func:`as_face_batch`, which also accepts plain ``(images, labels)`` tuples and
lists, so a ``DataLoader(TensorDataset(images, labels))`` is a valid training loader.

The data side serves teacher embeddings to any object with the :class:`TeacherEmbeddings` methods
(``ekd.distill.cache.TeacherEmbeddingCache``); a datamodule that can serve them implements
:class:`ServesTeacherEmbeddings`. Both are protocols so that ``ekd.data`` needs nothing from the
layers above it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate


def normalise_batch(images: Tensor, flipped: Tensor | None = None) -> Tensor:
    """uint8 RGB N x 3 x H x W as stored -> float32 ``(x - 127.5) / 127.5``, mirrored where ``flipped``.

    ``flipped``: N bool (None: no row is mirrored). Runs wherever ``images`` are (the device, after the
    transfer). The values equal the former host path exactly: ``float32(x) - 127.5`` is exact and the
    division is one correctly rounded float32 operation on every backend. Float ``images`` are returned
    unchanged: they are already normalised and mirrored (a ``TensorDataset`` loader, a dataset with a
    host ``transform``, a user's dataset), so applying this twice, or to any float batch, is harmless.
    """
    if images.dtype != torch.uint8:
        return images
    if flipped is not None:
        # mirror in uint8 (a quarter of the bytes) and without a host sync on flipped.any()
        rows = flipped.to(device=images.device, dtype=torch.bool).view(-1, *([1] * (images.ndim - 1)))
        images = torch.where(rows, images.flip(-1), images)
    return images.float().sub_(127.5).div_(127.5)


@dataclass
class FaceBatch:
    """One training batch; see the module docstring for the fields."""

    images: Tensor
    labels: Tensor
    indices: Tensor | None = None
    flipped: Tensor | None = None
    teacher_embedding: Tensor | None = None

    def normalised(self) -> FaceBatch:
        """This batch with :func:`normalise_batch` applied to ``images`` (itself when they are not uint8)."""
        if not isinstance(self.images, Tensor) or self.images.dtype != torch.uint8:
            return self  # float (already final) or not images at all (the training step says why)
        return dataclasses.replace(self, images=normalise_batch(self.images, self.flipped))

    def pin_memory(self) -> FaceBatch:
        """A copy with every tensor in pinned memory (the DataLoader's ``pin_memory=True`` calls this)."""
        return dataclasses.replace(
            self,
            **{
                field.name: value.pin_memory()
                for field in dataclasses.fields(self)
                if isinstance(value := getattr(self, field.name), Tensor)
            },
        )


def as_face_batch(batch: Any) -> FaceBatch:
    """``batch`` as a :class:`FaceBatch`: a FaceBatch is returned as is, ``(images, labels)`` is wrapped.

    Raises ValueError for anything else (other sequence lengths included: extra per-row data travels in
    FaceBatch's named fields, never by position).
    """
    if isinstance(batch, FaceBatch):
        return batch
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return FaceBatch(images=batch[0], labels=batch[1])
    what = f"a sequence of {len(batch)} items" if isinstance(batch, (tuple, list)) else type(batch).__name__
    raise ValueError(f"a training batch must be (images, labels) or an ekd.data.FaceBatch, got {what}")


def collate_face_batch(samples: Sequence[tuple[Tensor, int, int, bool]]) -> FaceBatch:
    """A FaceBatch of ``(image, label, index, flipped)`` samples (the datamodule's ``collate_fn``)."""
    # default_collate stacks into shared memory inside workers: no extra copy back to the main process
    images, labels, indices, flipped = default_collate(list(samples))
    return FaceBatch(images=images, labels=labels.long(), indices=indices.long(), flipped=flipped.bool())


class IndexedDataset(Dataset):
    """``dataset``'s samples as ``(image, label, index, flipped)``: what :func:`collate_face_batch` takes.

    An ``(index, flip)`` key is the sampler's flip decision and is passed through unchanged. A plain index
    means no flip, unless ``dataset.flip`` is true (``FaceRecordDataset(flip=True)`` read with a sampler
    that yields plain indices): then the flip is drawn here, with probability 0.5 from torch's global RNG
    (seeded per worker by the DataLoader), and passed on as a pair, so that ``flipped`` is always the
    truth. uint8 datasets return the image as stored and :func:`normalise_batch` mirrors it on the device.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, bool]) -> tuple[Tensor, int, int, bool]:
        if isinstance(key, (tuple, list)):
            index, flipped = int(key[0]), bool(key[1])
        elif getattr(self.dataset, "flip", False):
            index, flipped = int(key), bool(torch.rand(()) < 0.5)
            key = (index, flipped)
        else:
            index, flipped = int(key), False
        sample = self.dataset[key]
        return sample[0], sample[1], index, flipped


@runtime_checkable
class TeacherEmbeddings(Protocol):
    """What the data side needs of a teacher embedding cache (``ekd.distill.cache.TeacherEmbeddingCache``)."""

    directory: Path

    def verify_dataset(self, dataset: Dataset) -> None:
        """Raise when the cache was built for another dataset."""

    def lookup(self, indices: Tensor, flipped: Tensor) -> Tensor:
        """float32 N x D embeddings of samples ``indices``, mirrored where ``flipped``."""

    def check_labels(self, indices: Tensor, labels: Tensor) -> None:
        """Raise when ``labels`` differ from the cached labels of ``indices``."""


@runtime_checkable
class ServesTeacherEmbeddings(Protocol):
    """A datamodule that fills ``FaceBatch.teacher_embedding`` from an attached cache."""

    def attach_teacher_cache(self, cache: TeacherEmbeddings) -> bool:
        """Serve teacher embeddings from ``cache``; False (and a log line saying why) when it cannot."""

    def detach_teacher_cache(self) -> None:
        """Stop serving teacher embeddings."""
