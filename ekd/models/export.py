"""ONNX export of a face backbone, laid out like insightface's recognition ONNX models.

The graph has one input ``data`` (N x 3 x H x W float32, dynamic batch axis) and one output
``embedding`` (N x D raw, not normalised). As in insightface's models, the input normalisation
``(x - 127.5) / 127.5`` of RGB pixels is NOT part of the graph: callers normalise first. The
normalisation, backbone name and embedding size are also written to the model's metadata
(``metadata_props``).

Exporter: torch's TorchScript-based one (``torch.onnx.export(..., dynamo=False)``) first. It handles
every backbone here (PReLU, grouped convolutions, BatchNorm folded at eval) with a plain dynamic batch
axis, writes the requested opset and takes well under a second for the small nets (the torch.export
based exporter takes about 5 s, prints progress and writes opset 18 before converting down). torch
marks the TorchScript exporter deprecated, so if it fails (or is gone), ``dynamo=True`` is used.

With ``verify`` the file is checked by ``onnx.checker`` and run by onnxruntime on a random batch of
another size than the export batch. The max abs difference to torch must be
``<= atol + rtol * max|torch output|``: ``atol`` = 1e-4 judges trained networks (embeddings of norm
~10-30); the relative term only matters for untrained deep networks, whose eval-mode outputs reach
1e20 and more with untouched BatchNorm statistics.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

INPUT_NAME = "data"
OUTPUT_NAME = "embedding"
NORMALISATION = "(x - 127.5) / 127.5 on RGB pixels, applied outside the graph"


class ExportVerificationError(RuntimeError):
    """onnxruntime's output differs from torch's by more than the tolerance."""


class _EmbeddingOnly(nn.Module):
    # a backbone's forward already returns the embedding; the wrapper pins the exported signature
    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, data: torch.Tensor) -> torch.Tensor:
        return self.backbone(data)


def _input_size(model: nn.Module) -> tuple[int, int]:
    height, width = getattr(model, "input_size", (112, 112))
    return int(height), int(width)


def verify_onnx(
    model: nn.Module, path: str | os.PathLike, batch_size: int = 3, seed: int = 0
) -> tuple[float, float]:
    """(max |onnxruntime - torch|, max |torch|) on a random normalised batch (values in [-1, 1])."""
    import onnx
    import onnxruntime

    onnx.checker.check_model(str(path))
    height, width = _input_size(model)
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch_size, 3, height, width, generator=generator) * 2 - 1
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = model(x.to(next(model.parameters()).device)).float().cpu().numpy()
    finally:
        model.train(was_training)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (actual,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
    if actual.shape != expected.shape:
        raise ExportVerificationError(
            f"{path}: onnxruntime output shape {actual.shape} != torch {expected.shape}"
        )
    return float(abs(actual - expected).max()), float(abs(expected).max())


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    opset: int = 17,
    verify: bool = True,
    atol: float = 1e-4,
    rtol: float = 1e-5,
) -> float | None:
    """Write ``model`` to ``path`` as ONNX (input ``data`` N x 3 x H x W, output ``embedding``).

    Returns the max abs difference onnxruntime vs torch when ``verify`` (raising
    ``ExportVerificationError`` above ``atol + rtol * max|torch|``), else None. The model's train/eval
    mode is restored.
    """
    path = Path(path)
    if not isinstance(opset, int) or isinstance(opset, bool) or opset < 9:
        raise ValueError(f"ONNX opset must be an int >= 9, got {opset!r}")
    if path.parent and not path.parent.exists():
        raise FileNotFoundError(f"output directory of {path} does not exist")
    height, width = _input_size(model)
    device = next(model.parameters()).device
    if device.type == "meta":
        raise ValueError("cannot export a model on the meta device: it has no weights")
    dummy = torch.zeros(2, 3, height, width, device=device)
    was_training = model.training
    model.eval()
    try:
        _run_exporter(_EmbeddingOnly(model).eval(), dummy, path, opset)
    finally:
        model.train(was_training)
    _write_metadata(path, model)

    if not verify:
        return None
    max_diff, scale = verify_onnx(model, path)
    tolerance = atol + rtol * scale
    if not max_diff <= tolerance:
        raise ExportVerificationError(
            f"{path}: onnxruntime differs from torch by {max_diff:.3g} "
            f"(tolerance {tolerance:.3g} = {atol:g} + {rtol:g} x max|torch| {scale:.3g})"
        )
    log.info("verified %s with onnxruntime: max abs diff %.3g", path, max_diff)
    return max_diff


def _run_exporter(module: nn.Module, dummy: torch.Tensor, path: Path, opset: int) -> None:
    names = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "opset_version": opset}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # chosen deliberately (module docstring): silence its deprecation notice, and the tracer's
            # note that the input-shape check in forward compares Python ints
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                module,
                (dummy,),
                str(path),
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                do_constant_folding=True,
                dynamo=False,
                **names,
            )
        return
    except Exception as error:  # noqa: BLE001  (fall back to the other exporter, re-raise if it fails too)
        log.warning(
            "TorchScript ONNX exporter failed (%s: %s); trying dynamo=True", type(error).__name__, error
        )
    with torch.no_grad():
        torch.onnx.export(
            module,
            (dummy,),
            str(path),
            dynamic_shapes={"data": {0: torch.export.Dim("batch")}},
            dynamo=True,
            verbose=False,
            **names,
        )


def _write_metadata(path: Path, model: nn.Module) -> None:
    import onnx

    proto = onnx.load(str(path))
    metadata = {
        "input_normalisation": NORMALISATION,
        "backbone": str(getattr(model, "backbone_name", type(model).__name__)),
        "embedding_size": str(getattr(model, "embedding_size", "")),
        "producer": "ekd",
    }
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
