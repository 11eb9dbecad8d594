"""Image decoding, encoding, resizing and normalisation shared by every dataset and format.

Decoder choice (measured in ``bench/bench_recordio.py``, results in ``BENCHMARKS.md``): on
112x112 face JPEGs ``simplejpeg`` (libjpeg-turbo, when installed) and ``torchvision.io.decode_jpeg``
are clearly faster than PIL; all three use libjpeg-turbo's default IDCT and return identical pixels.
``decode_image`` therefore uses simplejpeg when importable, torchvision otherwise, and PIL for
anything that is not a JPEG (PNG, BMP, ...).

Contract (ARCHITECTURE.md): images are N x 3 x 112 x 112 float RGB normalised ``(x - 127.5) / 127.5``.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image

from ekd.data.errors import DataError

IMAGE_SIZE = 112

try:  # optional, faster libjpeg-turbo binding
    import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover - depends on the environment
    _simplejpeg = None

try:
    from torchvision.io import decode_jpeg as _tv_decode_jpeg
except ImportError:  # pragma: no cover - torchvision is a declared dependency
    _tv_decode_jpeg = None

_JPEG_SOI = b"\xff\xd8"


def decoder_name() -> str:
    """Name of the JPEG decoder :func:`decode_image` uses on this machine."""
    if _simplejpeg is not None:
        return "simplejpeg"
    if _tv_decode_jpeg is not None:
        return "torchvision"
    return "pil"


def _decode_pil(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.array(im.convert("RGB"))  # a writable copy for torch.from_numpy


def decode_image(data: bytes | bytearray | memoryview, where: str = "image") -> torch.Tensor:
    """Decode encoded image bytes into a uint8 RGB tensor 3 x H x W.

    Raises :class:`DataError` naming ``where`` (e.g. ``"train.rec record 5"``) when undecodable.
    """
    data = bytes(data)
    try:
        if data[:2] == _JPEG_SOI:
            if _simplejpeg is not None:
                hwc = _simplejpeg.decode_jpeg(data, colorspace="RGB")
                return torch.from_numpy(hwc).permute(2, 0, 1)
            if _tv_decode_jpeg is not None:
                with warnings.catch_warnings():  # the bytes are copied into a fresh writable tensor
                    warnings.simplefilter("ignore", UserWarning)
                    buf = torch.frombuffer(bytearray(data), dtype=torch.uint8)
                chw = _tv_decode_jpeg(buf)
                if chw.shape[0] == 1:  # greyscale JPEG
                    chw = chw.expand(3, -1, -1)
                return chw
        hwc = _decode_pil(data)
        return torch.from_numpy(np.ascontiguousarray(hwc)).permute(2, 0, 1)
    except Exception as err:  # decoders raise RuntimeError, OSError, ValueError ... depending on backend
        raise DataError(f"{where}: cannot decode the image payload ({len(data)} bytes): {err}") from None


def encode_jpeg(image: np.ndarray | torch.Tensor, quality: int = 95) -> bytes:
    """Encode a uint8 RGB image (H x W x 3 array or 3 x H x W tensor) as JPEG bytes."""
    hwc = _to_hwc(image)
    buf = io.BytesIO()
    Image.fromarray(hwc, "RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_png(image: np.ndarray | torch.Tensor) -> bytes:
    """Encode a uint8 RGB image losslessly as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(_to_hwc(image), "RGB").save(buf, format="PNG")
    return buf.getvalue()


def _to_hwc(image: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
        if image.ndim == 3 and image.shape[0] == 3:
            image = image.transpose(1, 2, 0)
    image = np.ascontiguousarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 RGB image H x W x 3, got dtype {image.dtype} shape {image.shape}")
    return image


def fit_to_size(image: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Resize a uint8 3 x H x W image so its shorter side is ``size``, then centre-crop to a square.

    Aligned face crops are already 112 x 112 and are returned unchanged.
    """
    _, h, w = image.shape
    if h == size and w == size:
        return image
    scale = size / min(h, w)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    pil = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy(), "RGB")
    pil = pil.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    pil = pil.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)


def normalize(image: torch.Tensor, flip: bool = False) -> torch.Tensor:
    """uint8 RGB 3 x H x W -> contiguous float32 ``(x - 127.5) / 127.5`` in [-1, 1] (ArcFace input).

    ``flip`` mirrors the image horizontally in the same pass. Done in numpy into one preallocated
    array: fewer passes than chained torch ops on a (possibly channels-last) decoder view, and the
    contiguous result makes the DataLoader's collate a plain copy.
    """
    src = image.numpy()
    if flip:
        src = src[:, :, ::-1]
    out = np.empty(src.shape, dtype=np.float32)
    np.subtract(src, np.float32(127.5), out=out, dtype=np.float32)
    out /= np.float32(127.5)
    return torch.from_numpy(out)
