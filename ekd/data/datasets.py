"""Face training datasets: insightface RecordIO folders and plain image folders, plus the packer.

Both datasets yield ``(float tensor 3 x 112 x 112 normalised (x - 127.5) / 127.5, int label)`` and
expose ``labels`` (numpy int64, known without decoding any image) and ``num_classes``; samplers build
their batches from ``labels``.

A sample key is an index (random flip with probability 0.5 when ``flip``) or an ``(index, flip)`` pair
whose flip decision is taken as given (the samplers' ``flip=True`` mode), so that the datamodule knows
which image each batch row is (``FaceBatch.indices`` / ``flipped``, ``ekd/data/batch.py``): what the
teacher embedding cache needs to look up the teacher's embedding of exactly the image the student sees.

A RecordIO root holds ``train.rec``, ``train.idx`` and ``property`` ("num_classes,112,112"), as
insightface's ``MXFaceDataset`` expects. :func:`pack_folder` writes exactly that from a folder with
one sub-folder per identity (``ekd-data pack``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ekd.data.errors import DataError, RecordIOError
from ekd.data.images import IMAGE_SIZE, decode_image, encode_jpeg, fit_to_size, normalize
from ekd.data.recordio import RecordReader, RecordWriter, first_label, pack_payload, unpack_payload

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

Transform = Callable[[torch.Tensor], torch.Tensor]


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


def _finish_sample(image: torch.Tensor, flipped: bool, transform: Transform | None) -> torch.Tensor:
    if image.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        image = fit_to_size(image)
    out = normalize(image, flip=flipped)
    return transform(out) if transform is not None else out


class FaceRecordDataset(Dataset):
    """insightface-format training set: ``root/train.rec`` + ``train.idx`` (+ ``property``).

    Args:
        root: folder with the three files.
        transform: optional callable applied to the normalised float image (after the flip).
        flip: random horizontal flip with probability 0.5 (the only augmentation of the recipes) of
            samples asked for by a plain index.

    ``labels`` come from the identity records of an insightface header (checked against the first
    image header of each identity) or, for im2rec files without header, from reading only the record
    headers. ``num_classes`` comes from ``property``, or is ``max(label) + 1`` when that file is absent.
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
        keys = np.array(reader.keys, dtype=np.int64)
        labels = np.array([int(first_label(reader.read_header(int(k)))) for k in keys], dtype=np.int64)
        return keys, labels

    def _from_identity_records(self, header0) -> tuple[np.ndarray, np.ndarray]:
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
        labels = np.full(len(keys), -1, dtype=np.int64)
        consistent = True
        for identity, key in enumerate(range(first_identity, end_identity)):
            header = reader.read_header(key)
            if header.flag < 2:
                raise RecordIOError(
                    f"{reader.rec_path} record {key}: identity record without a [start, end) label array"
                )
            start, end = int(header.label[0]), int(header.label[1])
            if not 1 <= start <= end <= first_identity:
                raise RecordIOError(
                    f"{reader.rec_path} record {key}: identity range [{start}, {end}) outside the image "
                    f"records 1..{first_identity - 1}"
                )
            labels[start - 1 : end - 1] = identity
            # insightface writes identity k's images with label k; verify on the first image.
            if start < end and int(first_label(reader.read_header(start))) != identity:
                consistent = False
                break
        if not consistent or (labels < 0).any():
            # Ranges do not determine the labels: read every image header instead.
            labels = np.array([int(first_label(reader.read_header(int(k)))) for k in keys], dtype=np.int64)
        return keys, labels

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
        index, flipped = split_key(key, self.flip)
        image, label = self.read_uint8(index)
        if not 0 <= label < self.num_classes:
            raise DataError(
                f"{self.reader.rec_path} record {int(self.keys[index])}: label {label} >= num_classes "
                f"{self.num_classes}"
            )
        out = _finish_sample(image, flipped, self.transform)
        return out, label


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
        index, flipped = split_key(key, self.flip)
        path, label = self.samples[index]
        out = _finish_sample(load_image_file(path), flipped, self.transform)
        return out, label


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
