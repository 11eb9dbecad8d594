"""Teacher class prototypes: the mean normalised teacher embedding of each identity, normalised.

    p_c = normalise( (1 / n_c) sum_{i : y_i = c} f^_t,i ),     f^ = f / ||f||

They serve as teacher class centres when the teacher's own classification head is not available or
covers other identities (KD's margin-free teacher logits s cos(f^_t, p_y); MarginDistillation).
One pass over the loader, teacher in eval mode, no gradient, sums accumulated in float64. Under DDP
the per-class sums and counts are averaged over ranks, which leaves their ratio unchanged: with a
distributed sampler each rank contributes its shard; without one every rank sees everything.

:func:`cached_class_prototypes` computes the same from a teacher embedding cache (every image and its
mirror, no teacher pass). ``ekd.distill.callbacks.TeacherPrototypesCallback`` runs one of them at fit
start for a DistillationModule.

``load_or_compute_prototypes`` caches the result on disk (``torch.save`` of a small dict) keyed by a
fingerprint string supplied by the caller (e.g. teacher checkpoint hash + dataset identity); a cache
made with another fingerprint or class count is refused with a clear message unless
``overwrite=True``, in which case it is recomputed and replaced. Under DDP every rank computes (the
reduction is collective), rank 0 writes, all ranks read the same file system path.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ekd import dist
from ekd.data.batch import FaceBatch, normalise_batch

if TYPE_CHECKING:
    from ekd.distill.cache import TeacherEmbeddingCache

CACHE_FORMAT = "ekd.prototypes/1"


def _split_batch(batch: Any, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) from a loader batch: a FaceBatch, a (images, labels, ...) sequence or a mapping.

    uint8 images (as stored, a FaceBatch's mirrored where ``flipped``) are normalised by the caller.
    """
    if isinstance(batch, FaceBatch):
        return batch.images, batch.labels
    if isinstance(batch, Mapping):
        images = next((batch[k] for k in ("image", "images", "img") if k in batch), None)
        labels = next((batch[k] for k in ("label", "labels", "target") if k in batch), None)
        if images is None or labels is None:
            raise ValueError(
                f"prototypes: batch {index} is a mapping with keys {sorted(batch)}; expected an image key "
                f"('image'/'images') and a label key ('label'/'labels')"
            )
        return images, labels
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError(
        f"prototypes: batch {index} is a {type(batch).__name__}; expected (images, labels, ...) or a mapping"
    )


def cached_class_prototypes(
    cache: TeacherEmbeddingCache, num_classes: int, chunk: int = 65536
) -> torch.Tensor:
    """C x D prototypes from the cached embeddings of every image and its mirror (no teacher pass).

    Reads the memory-mapped cache ``chunk`` samples at a time.
    """

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, cache.num_images, chunk):
            indices = torch.arange(start, min(start + chunk, cache.num_images))
            labels = torch.from_numpy(np.array(cache.labels[start : start + chunk], dtype=np.int64))
            for flip in (False, True):
                yield cache.lookup(indices, torch.full(indices.shape, flip)), labels

    return compute_class_prototypes(nn.Identity(), batches(), num_classes)


@torch.no_grad()
def compute_class_prototypes(
    teacher: nn.Module, loader: Iterable, num_classes: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """C x D prototypes (float32, on CPU) of ``teacher`` over ``loader``; see the module docstring.

    ``teacher`` must already be on ``device`` (images and labels are moved there) and map images to
    N x D raw embeddings; labels must be integers in [0, num_classes). uint8 images (the datamodule's
    batches) go through :func:`ekd.data.batch.normalise_batch` on ``device`` first, as in training.
    Raises ValueError naming the classes without any image.
    """
    if int(num_classes) < 1:
        raise ValueError(f"prototypes: num_classes must be >= 1, got {num_classes}")
    device = torch.device(device)
    was_training = teacher.training
    teacher.eval()
    sums: torch.Tensor | None = None
    counts = torch.zeros(num_classes, dtype=torch.float64, device=device)
    try:
        for index, batch in enumerate(loader):
            images, labels = _split_batch(batch, index)
            labels = torch.as_tensor(labels).to(device).reshape(-1).long()
            # uint8 rows: the training batches' device transform (mirrored where flipped, normalised)
            flipped = batch.flipped if isinstance(batch, FaceBatch) else None
            embeddings = teacher(normalise_batch(images.to(device), flipped))
            if embeddings.ndim != 2 or embeddings.shape[0] != labels.shape[0]:
                raise ValueError(
                    f"prototypes: batch {index}: the teacher returned shape {tuple(embeddings.shape)} for "
                    f"{labels.shape[0]} labels; expected N x D embeddings"
                )
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
                raise ValueError(
                    f"prototypes: batch {index} has labels in [{int(labels.min())}, {int(labels.max())}], "
                    f"outside [0, {num_classes})"
                )
            unit = F.normalize(embeddings.double(), dim=1)
            if sums is None:
                sums = torch.zeros(num_classes, unit.shape[1], dtype=torch.float64, device=device)
            sums.index_add_(0, labels, unit)
            counts.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
    finally:
        teacher.train(was_training)
    if sums is None:
        raise ValueError("prototypes: the loader yielded no batch")
    sums, counts = dist.all_reduce_mean(sums), dist.all_reduce_mean(counts)
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        shown = ", ".join(str(c) for c in empty[:20]) + (" ..." if len(empty) > 20 else "")
        raise ValueError(
            f"prototypes: {len(empty)} of {num_classes} classes have no image in the loader "
            f"(classes {shown}); check num_classes and the dataset"
        )
    means = sums / counts.unsqueeze(1)
    return F.normalize(means, dim=1).float().cpu()


def load_or_compute_prototypes(
    cache_path: str | os.PathLike,
    fingerprint: str,
    teacher: nn.Module,
    loader: Iterable,
    num_classes: int,
    device: torch.device | str = "cpu",
    overwrite: bool = False,
) -> torch.Tensor:
    """Prototypes from ``cache_path`` when it was made with ``fingerprint``; computed and saved otherwise.

    A cache with another fingerprint or class count raises ValueError, unless ``overwrite`` is True.
    """
    path = Path(cache_path)
    if not isinstance(fingerprint, str) or not fingerprint:
        raise ValueError(f"prototypes: fingerprint must be a non-empty string, got {fingerprint!r}")
    if path.exists():
        cached = _read_cache(path)
        if cached["fingerprint"] == fingerprint and cached["num_classes"] == num_classes:
            return cached["prototypes"]
        if not overwrite:
            raise ValueError(
                f"prototypes cache {path} was made for fingerprint {cached['fingerprint']!r} with "
                f"{cached['num_classes']} classes, but {fingerprint!r} with {num_classes} classes is "
                f"requested; delete it, choose another path or pass overwrite=True to recompute it"
            )
    prototypes = compute_class_prototypes(teacher, loader, num_classes, device)
    if dist.rank() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        payload = {
            "format": CACHE_FORMAT,
            "fingerprint": fingerprint,
            "num_classes": num_classes,
            "prototypes": prototypes,
        }
        torch.save(payload, tmp)
        os.replace(tmp, path)  # atomic: a reader never sees a half-written cache
    return prototypes


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which file and what was expected
        raise ValueError(f"prototypes cache {path} is not a readable {CACHE_FORMAT} file: {exc}") from exc
    if not isinstance(cached, dict) or cached.get("format") != CACHE_FORMAT:
        raise ValueError(f"prototypes cache {path} is not an {CACHE_FORMAT} file")
    protos = cached.get("prototypes")
    if (
        not isinstance(protos, torch.Tensor)
        or protos.ndim != 2
        or protos.shape[0] != cached.get("num_classes")
    ):
        raise ValueError(f"prototypes cache {path}: 'prototypes' must be a num_classes x D tensor")
    return cached
