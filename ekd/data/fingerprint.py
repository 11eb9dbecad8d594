"""Dataset fingerprints: the identity of a training set, cheap to compute and independent of its location.

They key everything computed once from the training images and reused across runs: the teacher
embedding cache (``ekd.distill.cache``) and the teacher class prototypes (``prototype_cache`` of
``ekd.lit.distillation.DistillationModule``, through :meth:`ekd.data.FaceDataModule.fingerprint`).

- RecordIO (:class:`~ekd.data.datasets.FaceRecordDataset`): SHA-256 over the ``.idx`` file's SHA-256,
  the number of samples, the ``.rec`` size, the ``property`` file's content and the labels (labels
  live in the ``.rec`` payloads, so a relabelled file can keep every offset);
- image folder (:class:`~ekd.data.datasets.FaceFolderDataset`): SHA-256 of the sorted
  ``relative path<TAB>label`` lines.

Image bytes are not hashed (hundreds of GB): an edit that keeps every record's offset and label, or
every file name, goes unnoticed. Other datasets have no fingerprint (:class:`~ekd.data.errors.DataError`).

:func:`cache_unusable_reason` says whether per-image values computed once (the teacher embedding
cache) can stand in for a dataset's samples; it lives here, on the data side, because the datamodule
decides whether it serves cached teacher embeddings (``ekd.data.FaceDataModule.attach_teacher_cache``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from ekd.data.datasets import FaceFolderDataset, FaceRecordDataset
from ekd.data.errors import DataError


def dataset_fingerprint(dataset: Dataset) -> str:
    """Hex SHA-256 identifying ``dataset``'s samples and labels (see the module docstring).

    Raises DataError for a dataset other than FaceRecordDataset / FaceFolderDataset.
    """
    from ekd.models.loading import file_sha256

    digest = hashlib.sha256()
    if isinstance(dataset, FaceRecordDataset):
        prop = dataset.root / "property"
        digest.update(b"rec\n")
        digest.update(file_sha256(dataset.reader.idx_path).encode())
        digest.update(f"\n{len(dataset)}\n{dataset.reader.file_size}\n".encode())
        digest.update(prop.read_bytes().strip() if prop.is_file() else b"<no property file>")
        digest.update(np.ascontiguousarray(dataset.labels, dtype="<i8").tobytes())
        return digest.hexdigest()
    if isinstance(dataset, FaceFolderDataset):
        digest.update(b"folder\n")
        for path, label in dataset.samples:
            digest.update(f"{Path(path).relative_to(dataset.root).as_posix()}\t{label}\n".encode())
        return digest.hexdigest()
    raise DataError(
        f"{type(dataset).__name__} has no dataset fingerprint: only FaceRecordDataset and FaceFolderDataset "
        "(the training sets ekd reads from disk) have one"
    )


def cache_unusable_reason(dataset: Dataset) -> str | None:
    """Why cached teacher embeddings cannot stand in for the online teacher on ``dataset`` (None: they can).

    The cache holds the teacher's embeddings of each image as stored and mirrored, so any augmentation
    beyond the horizontal flip would give the student an image the cache does not know; and the cache is
    keyed by the dataset fingerprint, so a dataset without one cannot be matched to a cache.
    """
    if getattr(dataset, "transform", None) is not None:
        return (
            f"the training dataset applies a transform ({dataset.transform!r}) beyond the horizontal flip; "  # type: ignore[attr-defined]
            "the cache only knows each image as stored and mirrored"
        )
    try:
        dataset_fingerprint(dataset)
    except DataError as err:
        return f"a teacher cache needs a dataset fingerprint: {err}"
    return None
