"""Face training datasets: insightface RecordIO folders and plain image folders, plus the packer.

Both datasets yield ``(uint8 tensor 3 x 112 x 112 RGB as stored, int label)`` and expose ``labels``
(numpy int64, known without decoding any image) and ``num_classes``; samplers build their batches from
``labels``. An item is a decode and nothing else: flipping and the ``(x - 127.5) / 127.5`` normalisation
run once per batch on the device (:func:`ekd.data.batch.normalise_batch`, BENCHMARKS.md "uint8 data
path"), on a quarter of the bytes.

A sample key is an index or an ``(index, flip)`` pair (the samplers' ``flip=True`` mode). The flip is
not applied here: ``IndexedDataset`` reports it in ``FaceBatch.flipped`` (drawing it for a plain index
when ``flip``), so that the datamodule knows which image each batch row is (``FaceBatch.indices`` /
``flipped``, ``ekd/data/batch.py``), what the teacher embedding cache needs to look up the teacher's
embedding of exactly the image the student sees, and ``normalise_batch`` mirrors those rows.

With a ``transform`` the host path of old is kept: the item is the float image, normalised, mirrored
(a pair's flip, or a random one for a plain index when ``flip``) and then transformed.

A RecordIO root holds ``train.rec``, ``train.idx`` and ``property`` ("num_classes,112,112"), as
insightface's ``MXFaceDataset`` expects. :func:`pack_folder` writes exactly that from a folder with
one sub-folder per identity (``ekd-data pack``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ekd.data.errors import DataError, RecordIOError
from ekd.data.images import IMAGE_SIZE, decode_image, encode_jpeg, fit_to_size, normalize
from ekd.data.recordio import (
    IRHeader,
    RecordReader,
    RecordWriter,
    first_label,
    pack_payload,
    unpack_payload,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

Transform = Callable[[torch.Tensor], torch.Tensor]

log = logging.getLogger(__name__)


def read_property(path: str | os.PathLike) -> tuple[int, int, int]:
    """Parse an insightface ``property`` file: ``num_classes,height,width``."""
    path = Path(path)
    text = path.read_text().strip()
    try:
        values = tuple(int(v) for v in text.split(","))
        if len(values) != 3 or min(values) <= 0:
            raise ValueError
    except ValueError:
        raise DataError(
            f"{path}: content {text!r} is not 'num_classes,height,width' with three positive integers"
        ) from None
    return values  # type: ignore[return-value]


def write_property(path: str | os.PathLike, num_classes: int, size: int = IMAGE_SIZE) -> None:
    Path(path).write_text(f"{num_classes},{size},{size}")


SampleKey = int | tuple[int, bool]


def split_key(key: SampleKey, random_flip: bool) -> tuple[int, bool]:
    """``(index, flipped)`` of a sample key: an ``(index, flip)`` pair is taken as given; a plain index
    is flipped with probability 0.5 when ``random_flip``."""
    if isinstance(key, (tuple, list)):
        if len(key) != 2:
            raise DataError(f"sample key {key!r}: expected an index or an (index, flip) pair")
        return int(key[0]), bool(key[1])
    # torch's global RNG: DataLoader seeds it per worker from the loader's base seed.
    return int(key), bool(random_flip and torch.rand(()) < 0.5)


def _finish_sample(
    image: torch.Tensor, key: SampleKey, random_flip: bool, transform: Transform | None
) -> torch.Tensor:
    """The item of ``key``: the uint8 image as stored, or with ``transform`` the transformed float one."""
    if image.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        image = fit_to_size(image)
    if transform is None:
        return image  # flip and normalisation run per batch on the device (normalise_batch)
    # a user transform sees what it always saw: the normalised float image, mirrored as the key says
    _, flipped = split_key(key, random_flip)
    return transform(normalize(image, flip=flipped))


class FaceRecordDataset(Dataset):
    """insightface-format training set: ``root/train.rec`` + ``train.idx`` (+ ``property``).

    Args:
        root: folder with the three files.
        transform: optional callable applied on the host to the normalised float image (after the flip);
            the item is then that float image (module docstring). None: uint8 items.
        flip: random horizontal flip with probability 0.5 (the only augmentation of the recipes) of
            samples asked for by a plain index, drawn by ``IndexedDataset`` (or here with a transform).

    ``labels`` always equal the class labels in the image record headers. They come from the identity
    records of an insightface header when those ranges are sorted, disjoint and cover the image records
    exactly and the first and last image of each identity carry its label (cheap: a few reads per
    identity); otherwise (overlapping, unsorted or missing ranges, gaps, disagreeing headers) from
    reading every image record's header, with a logged warning saying why and how long that took.
    im2rec files without header record are always read that way. A header label that is not an
    integer is a :class:`DataError` naming the record. ``num_classes`` comes from ``property``, or is
    ``max(label) + 1`` when that file is absent.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Transform | None = None,
        flip: bool = True,
    ) -> None:
        self.root = Path(root)
        self.transform = transform
        self.flip = flip
        rec_path = self.root / "train.rec"
        if not rec_path.is_file():
            raise RecordIOError(
                f"{rec_path}: record file not found (expected train.rec, train.idx, property)"
            )
        self.reader = RecordReader(rec_path, self.root / "train.idx")
        self.keys, self.labels = self._read_keys_and_labels()
        prop = self.root / "property"
        if prop.is_file():
            self.num_classes, h, w = read_property(prop)
            if (h, w) != (IMAGE_SIZE, IMAGE_SIZE):
                raise DataError(f"{prop}: image size {h}x{w}, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
        else:
            self.num_classes = int(self.labels.max()) + 1 if len(self.labels) else 0
        bad = np.flatnonzero((self.labels < 0) | (self.labels >= self.num_classes))
        if bad.size:
            i = int(bad[0])
            raise DataError(
                f"{rec_path}: record key {self.keys[i]} has label {self.labels[i]}, expected 0 <= label < "
                f"num_classes = {self.num_classes} (from {prop if prop.is_file() else 'the labels'}); "
                f"{bad.size} records are out of range"
            )

    def _read_keys_and_labels(self) -> tuple[np.ndarray, np.ndarray]:
        reader = self.reader
        if 0 in reader:
            # insightface header record: a label array and no image bytes (an im2rec image record 0
            # with a label array carries its image).
            header0, image0 = unpack_payload(reader.read(0), f"{reader.rec_path} record 0")
            if header0.flag > 0 and len(image0) == 0:
                return self._from_identity_records(header0)
        # im2rec layout: no identity records, the record headers are the only source of labels.
        keys = np.array(reader.keys, dtype=np.int64)
        start = time.perf_counter()
        labels = self._header_labels(keys)
        log.info(
            "%s: no insightface header record; read the labels of %d record headers (%.1f s)",
            reader.rec_path, len(keys), time.perf_counter() - start,
        )  # fmt: skip
        return keys, labels

    def _header_labels(self, keys: np.ndarray) -> np.ndarray:
        """int64 class labels read from the headers of the records ``keys`` (one small read each)."""
        values = np.array([first_label(self.reader.read_header(int(k))) for k in keys], dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)))
        if bad.size:
            i = int(bad[0])
            more = f" ({bad.size} records have such labels)" if bad.size > 1 else ""
            raise DataError(
                f"{self.reader.rec_path} record {int(keys[i])}: header label {float(values[i])!r} is not an "
                f"integer class{more}"
            )
        return values.astype(np.int64)

    def _from_identity_records(self, header0: IRHeader) -> tuple[np.ndarray, np.ndarray]:
        reader = self.reader
        where = f"{reader.rec_path} record 0"
        if header0.flag < 2:
            raise RecordIOError(f"{where}: header record label has {header0.flag} values, expected [A, B]")
        first_identity, end_identity = int(header0.label[0]), int(header0.label[1])
        if not 1 <= first_identity <= end_identity:
            raise RecordIOError(
                f"{where}: header label [{first_identity}, {end_identity}] is not 1 <= A <= B"
            )
        keys = np.arange(1, first_identity, dtype=np.int64)
        labels, reason = self._labels_from_ranges(first_identity, end_identity)
        if labels is None:
            # Never a silent disagreement between .labels and the image headers: the headers win.
            start = time.perf_counter()
            labels = self._header_labels(keys)
            log.warning(
                "%s: the identity records do not determine the labels (%s); read the labels of all %d "
                "image record headers instead (%.1f s)",
                reader.rec_path, reason, len(keys), time.perf_counter() - start,
            )  # fmt: skip
        return keys, labels

    def _labels_from_ranges(self, first_identity: int, end_identity: int) -> tuple[np.ndarray | None, str]:
        """Labels from the identity records ``first_identity .. end_identity - 1``, or None and why not.

        The ranges must be sorted, disjoint and cover the image records ``1 .. first_identity - 1``
        exactly, and the first and last image of each identity must carry its label in their header.
        With images grouped by label (as insightface and :func:`write_face_records` write them) the
        headers in between then carry it too: the labels equal the headers at two reads per identity.
        """
        reader = self.reader
        if end_identity == first_identity:
            return None, "record 0 announces no identity records"
        ranges: list[tuple[int, int]] = []
        for key in range(first_identity, end_identity):
            if key not in reader:
                return None, f"identity record {key} is missing from {reader.idx_path}"
            header = reader.read_header(key)
            if header.flag < 2:
                return None, f"record {key} is not an identity record (no [start, end) label array)"
            ranges.append((int(header.label[0]), int(header.label[1])))
        # Diagnosed in this order so that the reason names the cause, not a consequence (swapped ranges
        # also leave a gap before the first one).
        for identity, (start, end) in enumerate(ranges):
            key = first_identity + identity
            if start > end:
                return None, f"identity record {key} has the range [{start}, {end}) with start > end"
            if identity == 0:
                continue
            previous = ranges[identity - 1]
            kind = "unsorted" if start < previous[0] else "overlapping" if start < previous[1] else None
            if kind is not None:
                return None, (
                    f"{kind} ranges: identity record {key} has [{start}, {end}) after "
                    f"[{previous[0]}, {previous[1]}) of record {key - 1}"
                )
        covered = 1  # image records 1 .. covered - 1 belong to the identities seen so far
        for identity, (start, end) in enumerate(ranges):
            if start > covered:
                return None, (
                    f"image records {covered}..{start - 1} belong to no identity (a gap before identity "
                    f"record {first_identity + identity})"
                )
            covered = end
        if covered != first_identity:
            return None, (
                f"the identity ranges end at {covered}, the image records at {first_identity} "
                f"(record 0 announces images 1..{first_identity - 1})"
            )
        starts = np.array([start for start, _ in ranges], dtype=np.int64)
        ends = np.array([end for _, end in ranges], dtype=np.int64)
        for identity in np.flatnonzero(ends > starts).tolist():
            for key in sorted({int(starts[identity]), int(ends[identity]) - 1}):
                label = int(self._header_labels(np.array([key]))[0])
                if label != identity:
                    return None, (
                        f"image record {key} has header label {label} but lies in the range "
                        f"[{starts[identity]}, {ends[identity]}) of identity {identity} "
                        f"(record {first_identity + identity})"
                    )
        return np.repeat(np.arange(len(ranges), dtype=np.int64), ends - starts), ""

    def __len__(self) -> int:
        return len(self.keys)

    def read_uint8(self, index: int) -> tuple[torch.Tensor, int]:
        """Decoded uint8 image 3 x H x W and label of sample ``index`` (no flip, no normalisation)."""
        key = int(self.keys[index])
        payload = self.reader.read(key)
        where = f"{self.reader.rec_path} record {key}"
        header, data = unpack_payload(payload, where)
        return decode_image(data, where), int(first_label(header))

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, int]:
        index, _ = split_key(key, False)  # validates the key; the flip travels in FaceBatch.flipped
        image, label = self.read_uint8(index)
        if not 0 <= label < self.num_classes:
            raise DataError(
                f"{self.reader.rec_path} record {int(self.keys[index])}: label {label} >= num_classes "
                f"{self.num_classes}"
            )
        return _finish_sample(image, key, self.flip, self.transform), label


def scan_image_folder(root: str | os.PathLike) -> tuple[list[str], list[tuple[Path, int]]]:
    """Identities (sorted sub-folder names) and ``(path, label)`` samples of an image folder."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{root}: no identity sub-folders (expected one folder of images per identity)")
    samples: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        files = sorted(
            p for p in (root / name).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise DataError(
                f"{root / name}: identity folder has no images (looked for {', '.join(IMAGE_EXTENSIONS)})"
            )
        samples.extend((path, label) for path in files)
    return classes, samples


def load_image_file(path: Path) -> torch.Tensor:
    """Decode an image file to uint8 3 x 112 x 112 (resized / centre-cropped when needed)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read the image file: {err}") from None
    return fit_to_size(decode_image(data, str(path)))


class FaceFolderDataset(Dataset):
    """One sub-folder per identity; sorted folder names give labels 0..C-1. Same output and arguments as
    :class:`FaceRecordDataset`."""

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Transform | None = None,
        flip: bool = True,
    ) -> None:
        self.root = Path(root)
        self.transform = transform
        self.flip = flip
        self.classes, self.samples = scan_image_folder(self.root)
        self.labels = np.array([label for _, label in self.samples], dtype=np.int64)
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, int]:
        index, _ = split_key(key, False)  # validates the key; the flip travels in FaceBatch.flipped
        path, label = self.samples[index]
        return _finish_sample(load_image_file(path), key, self.flip, self.transform), label


def write_face_records(
    out: str | os.PathLike,
    images: Sequence[bytes],
    labels: Sequence[int] | np.ndarray,
    num_classes: int | None = None,
) -> None:
    """Write insightface-style ``train.rec`` / ``train.idx`` / ``property`` from encoded images.

    Images must be grouped by label in ascending order (identity ``k``'s images contiguous), as the
    identity records store ``[start, end)`` key ranges. Record 0 holds ``[A, B]``, images are keys
    ``1..A-1`` (header id = key), identity records keys ``A..B-1``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(labels, dtype=np.int64)
    if len(images) != len(labels):
        raise ValueError(f"write_face_records: {len(images)} images but {len(labels)} labels")
    if len(labels) and (np.diff(labels) < 0).any():
        raise ValueError("write_face_records: images must be sorted by label (identities contiguous)")
    num_classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    first_identity = len(images) + 1
    with RecordWriter(out / "train.rec", out / "train.idx") as writer:
        writer.write(0, pack_payload([first_identity, first_identity + num_classes], b""))
        for i, (data, label) in enumerate(zip(images, labels.tolist())):
            writer.write(i + 1, pack_payload(float(label), data, id=i + 1))
        starts = np.searchsorted(labels, np.arange(num_classes), side="left") + 1
        ends = np.searchsorted(labels, np.arange(num_classes), side="right") + 1
        for k in range(num_classes):
            key = first_identity + k
            writer.write(key, pack_payload([int(starts[k]), int(ends[k])], b"", id=key))
    write_property(out / "property", num_classes)


def pack_folder(folder: str | os.PathLike, out: str | os.PathLike, quality: int = 95) -> tuple[int, int]:
    """Pack an identity image folder into insightface ``train.rec/.idx/property``; returns (images, classes).

    Images that are not 112 x 112 are resized (shorter side) and centre-cropped; everything is stored
    as JPEG. JPEG files that already are 112 x 112 are stored byte for byte.
    """
    classes, samples = scan_image_folder(folder)
    payloads: list[bytes] = []
    for path, _ in samples:
        data = path.read_bytes()
        image = decode_image(data, str(path))
        if data[:2] == b"\xff\xd8" and image.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE):
            payloads.append(data)
        else:
            payloads.append(encode_jpeg(fit_to_size(image), quality=quality))
    write_face_records(out, payloads, [label for _, label in samples], num_classes=len(classes))
    return len(samples), len(classes)
