"""insightface verification ``.bin`` sets (LFW, CFP-FP, AgeDB-30, ...): reading and writing.

A ``.bin`` file is a pickle of ``(bins, issame_list)``: ``bins`` holds 2N encoded images (``bytes``, or
uint8 numpy arrays of the encoded bytes in re-packed files), pair ``i`` is images ``2i`` and ``2i+1``,
``issame_list`` holds N booleans. Files written by Python 2 need ``encoding='bytes'`` to unpickle. An
image in several pairs (LFW's images are; so are pooled synthetic sets) repeats its bytes in each slot:
:func:`load_bin` decodes such bytes once.
"""

from __future__ import annotations

import io
import os
import pickle
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ekd.data.errors import BinFormatError, DataError
from ekd.data.images import IMAGE_SIZE, decode_image, encode_jpeg, encode_png, fit_to_size

# Number of pairs of the public insightface verification sets.
KNOWN_BIN_SETS: dict[str, int] = {
    "lfw": 6000,
    "cfp_fp": 7000,
    "cfp_ff": 7000,
    "agedb_30": 6000,
    "calfw": 6000,
    "cplfw": 6000,
    "vgg2_fp": 5000,
}


def _unpickle(path: Path) -> object:
    data = path.read_bytes()
    try:
        return pickle.loads(data)
    except UnicodeDecodeError:
        pass  # a Python 2 pickle of str objects: read them as bytes
    except Exception as err:
        raise BinFormatError(f"{path}: not a pickled (bins, issame_list) .bin file: {err}") from None
    try:
        return pickle.loads(data, encoding="bytes")
    except Exception as err:
        raise BinFormatError(f"{path}: not a pickled (bins, issame_list) .bin file: {err}") from None


def _decode_entry(entry: object, path: Path, index: int) -> torch.Tensor:
    where = f"{path} image {index}"
    if isinstance(entry, (bytes, bytearray, memoryview)):
        return decode_image(entry, where)
    if isinstance(entry, np.ndarray) and entry.dtype == np.uint8:
        if entry.ndim == 1:  # encoded bytes stored as an array
            return decode_image(entry.tobytes(), where)
        if entry.ndim == 3 and entry.shape[2] == 3:  # already decoded H x W x 3
            return torch.from_numpy(np.ascontiguousarray(entry)).permute(2, 0, 1)
    desc = f"{type(entry).__name__}" + (
        f" dtype {entry.dtype} shape {entry.shape}" if isinstance(entry, np.ndarray) else ""
    )
    raise BinFormatError(f"{where}: unsupported entry {desc}; expected encoded bytes or a uint8 array")


def _entry_key(entry: object) -> bytes | None:
    """The encoded bytes of an entry (equal bytes decode to equal images); None for decoded arrays."""
    if isinstance(entry, bytes):
        return entry
    if isinstance(entry, (bytearray, memoryview)):
        return bytes(entry)
    if isinstance(entry, np.ndarray) and entry.dtype == np.uint8 and entry.ndim == 1:
        return entry.tobytes()
    return None


def load_bin(path: str | os.PathLike, image_size: int = IMAGE_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a verification ``.bin`` into ``(uint8 images 2N x 3 x S x S RGB, bool issame of N)``.

    Images of another size are resized (shorter side) and centre-cropped to ``image_size``. A file
    named like a known set (``lfw.bin`` ...) with another pair count triggers a warning.
    """
    path = Path(path)
    if not path.is_file():
        raise BinFormatError(f"{path}: verification .bin file not found")
    obj = _unpickle(path)
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise BinFormatError(
            f"{path}: expected a pickled pair (bins, issame_list), got {type(obj).__name__}"
            + (f" of length {len(obj)}" if isinstance(obj, (tuple, list)) else "")
        )
    bins, issame_list = obj
    try:
        bins = list(bins)
        issame = np.asarray(list(issame_list))
    except TypeError:
        raise BinFormatError(f"{path}: bins and issame_list must be sequences") from None
    if issame.ndim != 1 or not (issame.dtype == np.bool_ or np.isin(issame, [0, 1]).all()):
        raise BinFormatError(f"{path}: issame_list must be a flat list of booleans, got dtype {issame.dtype}")
    if len(bins) != 2 * len(issame):
        raise BinFormatError(
            f"{path}: {len(bins)} images for {len(issame)} pairs; expected 2 images per pair "
            f"({2 * len(issame)})"
        )
    name = path.stem.lower()
    if name in KNOWN_BIN_SETS and KNOWN_BIN_SETS[name] != len(issame):
        warnings.warn(
            f"{path}: the {name} verification set has {KNOWN_BIN_SETS[name]} pairs, this file has "
            f"{len(issame)}",
            stacklevel=2,
        )
    images = torch.empty((len(bins), 3, image_size, image_size), dtype=torch.uint8)
    first_slot: dict[bytes, int] = {}  # encoded bytes -> the slot that decoded them
    for i, entry in enumerate(bins):
        key = _entry_key(entry)
        if key is not None and key in first_slot:  # an image in several pairs: decoded once
            images[i] = images[first_slot[key]]
            continue
        try:
            image = _decode_entry(entry, path, i)
        except BinFormatError:
            raise
        except DataError as err:
            raise BinFormatError(str(err)) from None
        images[i] = fit_to_size(image, image_size)
        if key is not None:
            first_slot[key] = i
    return images, torch.from_numpy(issame.astype(bool))


def write_bin(
    path: str | os.PathLike,
    images: torch.Tensor | np.ndarray,
    issame: Sequence[bool] | np.ndarray | torch.Tensor,
    image_format: str = "jpeg",
    buffer_kind: str = "bytes",
    quality: int = 95,
    index: Sequence[int] | np.ndarray | torch.Tensor | None = None,
) -> None:
    """Write ``(uint8 images 2N x 3 x H x W RGB, issame of N)`` as an insightface ``.bin``.

    ``image_format`` "jpeg" (as insightface) or "png" (lossless); ``buffer_kind`` "bytes" (insightface)
    or "array" (each image's encoded bytes as a 1-D uint8 numpy array). With ``index`` (2N positions),
    ``images`` holds the distinct images and pair slot ``k`` shows ``images[index[k]]``: each image is
    encoded once and its bytes repeated in every slot that shows it (an image in several pairs, as in
    LFW; :func:`load_bin` decodes such bytes once).
    """
    images_t = torch.as_tensor(images)
    issame_np = np.asarray(torch.as_tensor(issame).cpu().numpy(), dtype=bool).ravel()
    if images_t.dtype != torch.uint8 or images_t.ndim != 4 or images_t.shape[1] != 3:
        raise ValueError(
            f"write_bin: images must be uint8 2N x 3 x H x W, got {images_t.dtype} {tuple(images_t.shape)}"
        )
    if index is None:
        slots = np.arange(images_t.shape[0])
    else:
        slots = np.asarray(torch.as_tensor(index).cpu().numpy()).ravel()
        out_of_range = slots.size and (slots.min() < 0 or slots.max() >= images_t.shape[0])
        if slots.dtype.kind not in "iu" or out_of_range:
            raise ValueError(
                f"write_bin: index must hold integer positions in [0, {images_t.shape[0]}) of the images"
            )
    if slots.size != 2 * len(issame_np):
        raise ValueError(f"write_bin: {slots.size} images for {len(issame_np)} pairs (need 2 per pair)")
    if image_format not in ("jpeg", "png"):
        raise ValueError(f"write_bin: image_format {image_format!r}, expected 'jpeg' or 'png'")
    if buffer_kind not in ("bytes", "array"):
        raise ValueError(f"write_bin: buffer_kind {buffer_kind!r}, expected 'bytes' or 'array'")
    encoded: dict[int, bytes | np.ndarray] = {}
    for position in np.unique(slots):
        image = images_t[int(position)]
        data = encode_jpeg(image, quality=quality) if image_format == "jpeg" else encode_png(image)
        as_array = np.frombuffer(data, dtype=np.uint8).copy() if buffer_kind == "array" else None
        encoded[int(position)] = data if as_array is None else as_array
    bins = [encoded[int(position)] for position in slots]
    buf = io.BytesIO()
    pickle.dump((bins, [bool(x) for x in issame_np]), buf, protocol=4)
    Path(path).write_bytes(buf.getvalue())
