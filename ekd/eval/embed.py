"""Embedding extraction for evaluation, as insightface does it (flip test-time augmentation).

For every uint8 image x (N x 3 x 112 x 112, RGB, as ``ekd.data.load_bin`` returns) the model sees
``(x - 127.5) / 127.5`` and its horizontal mirror; the two *raw* embeddings are summed and the sum is
L2-normalised: e = normalise(f(x) + f(flip(x))). XNorm is the mean L2 norm of all raw embeddings
(both views), the figure insightface logs next to each accuracy.

A model is either a torch ``nn.Module`` (a ``FaceBackbone``; run under ``torch.no_grad``, in eval
mode, channels_last input on CUDA) or an ONNX model run by onnxruntime (an ``InferenceSession`` or a
path; input already normalised float32, named ``data``).

Precision (``precision``, Lightning's spellings): ``"32-true"`` (default, on every device) runs the
module in fp32, as both reference IJB scripts (insightface's ``eval_ijbc.py``, TFace's
``recognition/test/extract_features.py``) and both pair-set scripts do; ``"16-mixed"`` /
``"bf16-mixed"`` run it under ``torch.autocast`` with fp16 / bf16 on the module's device (CPU
included), only when asked: its effect on TPR at FPR 1e-4 ... 1e-6 is unmeasured (BENCHMARKS.md).
A half-precision batch whose output is not finite is recomputed in fp32. ONNX models run in the
precision they were exported in; ``precision`` does not apply to them.

With ``dedupe=True`` (what the pair-set evaluation asks for) equal images are embedded once: an image in
several pairs (LFW, pooled synthetic sets) is stored once per pair, and embedding each copy would only
repeat work. Equal means equal pixels (:func:`distinct_images`); the embeddings, the order and XNorm
(each copy counted) are those of embedding every copy.

Under DDP (``shard=True``) each rank embeds one contiguous slice of the images (the first
``N % world`` ranks take one image more) and the slices are gathered in rank order with
``ekd.dist.gather_nograd``, so every rank ends with all N embeddings in the original order.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ekd import dist
from ekd.choices import EvalPrecision, parse_choice
from ekd.data.batch import normalise_batch

#: A batch function: normalised float images N x 3 x H x W -> raw embeddings N x D (float32).
BatchEmbedder = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class EmbeddingResult:
    """Flip-summed embeddings of N images.

    raw: N x D sum of the raw embeddings of the image and its mirror (unnormalised, float32).
    embeddings: ``raw`` L2-normalised (float32).
    xnorm: mean L2 norm of the raw per-view embeddings (over both views when ``flip``).
    """

    raw: torch.Tensor
    embeddings: torch.Tensor
    xnorm: float


#: autocast dtype of each evaluation precision (None: plain fp32, no autocast)
AUTOCAST_DTYPES: dict[EvalPrecision, torch.dtype | None] = {
    EvalPrecision.fp32: None,
    EvalPrecision.fp16: torch.float16,
    EvalPrecision.bf16: torch.bfloat16,
}


def parse_precision(precision: str | EvalPrecision, key: str = "precision") -> EvalPrecision:
    """``precision`` as an :class:`~ekd.choices.EvalPrecision`; ValueError naming ``key`` and the choices."""
    return parse_choice(EvalPrecision, precision, key, "precision")


def _check_images(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a uint8 tensor or array, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (0..255, normalised inside), got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be N x 3 x H x W (RGB), got shape {tuple(images.shape)}")
    return images


def distinct_images(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(first, inverse)`` of uint8 ``images`` (N x ...): the positions of the first copy of each
    distinct image, in order, and for every image the row of ``first`` that equals it
    (``images[first][inverse]`` equals ``images``).

    Images are grouped by a digest of their pixels and compared pixel for pixel within a group, so a
    digest collision cannot merge two different images.
    """
    flat = images.reshape(images.shape[0], -1)
    array = flat.cpu().numpy()  # a no-op on the CPU
    groups: dict[bytes, list[int]] = {}  # digest -> rows of ``first`` with that digest
    first: list[int] = []
    inverse = torch.empty(images.shape[0], dtype=torch.long)
    for position in range(array.shape[0]):
        row = np.ascontiguousarray(array[position])
        rows = groups.setdefault(hashlib.blake2b(row.data, digest_size=16).digest(), [])
        for candidate in rows:
            if np.array_equal(array[first[candidate]], row):
                inverse[position] = candidate
                break
        else:
            rows.append(len(first))
            inverse[position] = len(first)
            first.append(position)
    return torch.tensor(first, dtype=torch.long), inverse


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode and restore every submodule's previous mode afterwards."""
    modes = {name: m.training for name, m in module.named_modules()}
    module.eval()
    try:
        yield module
    finally:
        for name, m in module.named_modules():
            if name in modes:
                m.training = modes[name]


def _module_device(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


class TorchEmbedder:
    """Runs a torch backbone on normalised batches: no_grad, channels_last on CUDA, fp32 unless
    ``precision`` asks for autocast (module docstring).

    A batch whose autocast output is not finite is recomputed in fp32. The module itself is left as
    it is (no memory-format or dtype change); the caller sets eval mode (``extract_embeddings`` does).
    """

    def __init__(self, module: nn.Module, precision: str | EvalPrecision = EvalPrecision.fp32) -> None:
        self.module = module
        self.device = _module_device(module)
        self.precision = parse_precision(precision)
        dtype = AUTOCAST_DTYPES[self.precision]
        # autocast only when asked, on whatever device the module is on
        self.amp = dtype is not None
        self.amp_dtype = dtype or torch.float16

    @torch.no_grad()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            # NHWC input lets cuDNN pick its channels-last kernels for every conv that follows
            batch = batch.contiguous(memory_format=torch.channels_last)
        out = self._forward(batch, self.amp)
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != batch.shape[0]:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"{type(self.module).__name__} must return N x D embeddings for an input of "
                f"{batch.shape[0]} images, got {shape}"
            )
        if self.amp and not bool(torch.isfinite(out).all()):
            # fp16 overflows where activations exceed 65504 (e.g. untrained deep nets in eval mode):
            # that batch is recomputed in fp32 rather than returned as inf/NaN
            out = self._forward(batch, False)
        return out.float()

    def _forward(self, batch: torch.Tensor, amp: bool) -> torch.Tensor:
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=amp):
            out = self.module(batch)
        return out[0] if isinstance(out, (tuple, list)) else out


class OnnxEmbedder:
    """Runs an ONNX model with onnxruntime; input ``data`` (or the model's only input), float32 NCHW.

    A model exported with a fixed batch size gets its last, short batch padded (the padding rows are
    dropped from the output), as insightface's evaluation does.
    """

    def __init__(self, model: str | os.PathLike | object, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        if isinstance(model, (str, os.PathLike)):
            path = os.fspath(model)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"ONNX model {path!r} does not exist")
            session = ort.InferenceSession(path, providers=providers or ort.get_available_providers())
        else:
            session = model
        self.session = session
        inputs = session.get_inputs()
        names = [i.name for i in inputs]
        if "data" in names:
            self.input = inputs[names.index("data")]
        elif len(inputs) == 1:
            self.input = inputs[0]
        else:
            raise ValueError(f"ONNX model has inputs {names}; expected one named 'data'")
        batch_dim = self.input.shape[0] if self.input.shape else None
        self.fixed_batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None
        self.device = torch.device("cpu")

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        array = batch.detach().to("cpu", torch.float32).numpy()
        outputs = []
        step = self.fixed_batch or array.shape[0]
        for start in range(0, array.shape[0], step):
            chunk = array[start : start + step]
            count = chunk.shape[0]
            if self.fixed_batch and count < self.fixed_batch:
                pad = np.zeros((self.fixed_batch - count, *chunk.shape[1:]), dtype=np.float32)
                chunk = np.concatenate([chunk, pad])
            out = self.session.run(None, {self.input.name: np.ascontiguousarray(chunk)})[0]
            outputs.append(np.asarray(out, dtype=np.float32)[:count])
        result = torch.from_numpy(np.concatenate(outputs))
        if result.ndim != 2 or result.shape[0] != array.shape[0]:
            raise ValueError(f"ONNX model must output N x D embeddings, got {tuple(result.shape)}")
        return result


def as_embedder(
    model: nn.Module | BatchEmbedder | str | os.PathLike, precision: str | EvalPrecision = EvalPrecision.fp32
) -> BatchEmbedder:
    """Wrap a torch module (run in ``precision``), an ONNX path or session, or pass a ready batch
    function through."""
    if isinstance(model, nn.Module):
        return TorchEmbedder(model, precision=precision)
    if isinstance(model, (str, os.PathLike)):
        return OnnxEmbedder(model)
    onnxruntime = sys.modules.get("onnxruntime")  # a session exists only once onnxruntime is imported
    if onnxruntime is not None and isinstance(model, onnxruntime.InferenceSession):
        return OnnxEmbedder(model)
    if callable(model):
        return model
    raise TypeError(f"cannot embed with a {type(model).__name__}: pass an nn.Module, ONNX path or session")


def extract_embeddings(
    model: nn.Module | BatchEmbedder | str | os.PathLike,
    images: torch.Tensor | np.ndarray,
    batch_size: int = 256,
    flip: bool = True,
    shard: bool = False,
    precision: str | EvalPrecision = EvalPrecision.fp32,
    dedupe: bool = False,
) -> EmbeddingResult:
    """Flip-summed, L2-normalised embeddings and XNorm of uint8 ``images`` (module docstring).

    ``precision``: ``"32-true"`` (default), ``"16-mixed"`` or ``"bf16-mixed"`` for a torch module.
    ``shard=True`` must be called by every rank of the process group (it gathers); the result is
    the same on all ranks. ``dedupe=True`` embeds each distinct image once (module docstring).
    """
    images = _check_images(images)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    first, inverse = distinct_images(images) if dedupe else (None, None)
    if first is not None and first.numel() == images.shape[0]:
        first = inverse = None  # nothing repeated: embed the images as they are
    work = images[first] if first is not None else images
    embedder = as_embedder(model, precision=precision)
    module = model if isinstance(model, nn.Module) else None
    start, end = (0, work.shape[0])
    if shard and dist.is_distributed():
        start, end = dist.shard_bounds(work.shape[0], dist.world_size(), dist.rank())
    device = getattr(embedder, "device", torch.device("cpu"))

    raw_parts: list[torch.Tensor] = []
    norm_parts: list[torch.Tensor] = []  # per image: the sum of its views' L2 norms (float64)
    with eval_mode(module) if module is not None else contextlib.nullcontext():
        for lo in range(start, end, batch_size):
            batch = normalise_batch(work[lo : min(lo + batch_size, end)].to(device, non_blocking=True))
            out = embedder(batch).to(device)
            norms = out.double().norm(dim=1)
            if flip:
                out_flip = embedder(torch.flip(batch, dims=[3])).to(device)
                norms = norms + out_flip.double().norm(dim=1)
                out = out + out_flip
            raw_parts.append(out)
            norm_parts.append(norms)
        if not raw_parts:  # a rank with an empty slice still joins the gather, with D learnt from the model
            probe = embedder(normalise_batch(work[:1].to(device)))
            raw_parts.append(probe.new_zeros((0, probe.shape[1])))
            norm_parts.append(torch.zeros(0, dtype=torch.float64, device=device))
    raw = torch.cat(raw_parts)
    norm_sums = torch.cat(norm_parts)
    if shard and dist.is_distributed():
        raw = dist.gather_nograd(raw)
        norm_sums = dist.gather_nograd(norm_sums)
    raw = raw.float().cpu()
    norm_sums = norm_sums.cpu()
    if inverse is not None:  # back to one row per input image, copies included
        raw, norm_sums = raw[inverse], norm_sums[inverse]
    views = 2 if flip else 1
    xnorm = float(norm_sums.sum()) / (views * images.shape[0]) if images.shape[0] else float("nan")
    embeddings = torch.nn.functional.normalize(raw.double(), dim=1).float()
    return EmbeddingResult(raw=raw, embeddings=embeddings, xnorm=xnorm)
