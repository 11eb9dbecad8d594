"""ONNX export: insightface-style graph interface, onnxruntime parity, failure reporting."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import ekd.models.export as export_module
from ekd.models import FaceBackbone, Features, create_backbone, export_onnx
from ekd.models.export import ExportVerificationError


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("iresnet18", {"base_width": 8, "input_size": (32, 32)}),
        ("mbf", {"width_mult": 0.25, "input_size": (32, 32)}),
    ],
)
def test_onnx_matches_torch_with_dynamic_batch(tmp_path, name: str, options: dict) -> None:
    model = create_backbone(name, embedding_size=16, **options).train()
    path = tmp_path / f"{name}.onnx"
    max_diff = export_onnx(model, path)
    assert max_diff is not None and max_diff <= 1e-4
    assert model.training  # mode restored

    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["data"]
    assert [o.name for o in proto.graph.output] == ["embedding"]
    assert proto.opset_import[0].version == 17
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert metadata["input_normalisation"].startswith("(x - 127.5) / 127.5")
    assert metadata["backbone"] == name and metadata["embedding_size"] == "16"

    # the graph takes normalised input (normalisation outside), any batch size
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pixels = torch.randint(0, 256, (5, 3, 32, 32)).float()
    x = (pixels - 127.5) / 127.5
    (onnx_out,) = session.run(None, {"data": x.numpy()})
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    assert onnx_out.shape == (5, 16)
    np.testing.assert_allclose(onnx_out, expected, atol=1e-4, rtol=0)


class _Linear(FaceBackbone):
    """The smallest FaceBackbone: a Linear layer on the flattened image (cheap to export)."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding_size = 4
        self.input_size = (16, 16)
        self.fc = torch.nn.Linear(3 * 16 * 16, 4)

    def forward_features(self, x: torch.Tensor) -> Features:
        self.check_input(x)
        return Features(embedding=self.fc(torch.flatten(x, 1)))


class _TraceDivergent(FaceBackbone):
    """Multiplies by a Python float drawn at call time: tracing freezes it, so ONNX != torch."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding_size = 4
        self.input_size = (16, 16)
        self.fc = torch.nn.Linear(3 * 16 * 16, 4)

    def forward_features(self, x: torch.Tensor) -> Features:
        self.check_input(x)
        scale = 1.0 + float(torch.rand(()))
        return Features(embedding=self.fc(torch.flatten(x, 1)) * scale)


def test_verification_failure_is_reported(tmp_path) -> None:
    with pytest.raises(ExportVerificationError, match=r"onnxruntime differs from torch by .* \(tolerance"):
        export_onnx(_TraceDivergent(), tmp_path / "bad.onnx")
    assert export_onnx(_TraceDivergent(), tmp_path / "unchecked.onnx", verify=False) is None


def test_bad_arguments(tmp_path) -> None:
    model = create_backbone("iresnet18", embedding_size=8, base_width=8, input_size=(32, 32))
    with pytest.raises(ValueError, match="opset must be an int >= 9"):
        export_onnx(model, tmp_path / "x.onnx", opset=7)
    with pytest.raises(FileNotFoundError, match="output directory"):
        export_onnx(model, tmp_path / "missing" / "x.onnx")
    with torch.device("meta"):
        meta = create_backbone("iresnet18", embedding_size=8, base_width=8, input_size=(32, 32))
    with pytest.raises(ValueError, match="meta device"):
        export_onnx(meta, tmp_path / "x.onnx")


def test_falls_back_to_the_dynamo_exporter(tmp_path, monkeypatch) -> None:
    real_export = torch.onnx.export
    calls = []

    def torchscript_unavailable(*args, dynamo: bool = True, **kwargs):
        calls.append(dynamo)
        if not dynamo:
            raise RuntimeError("TorchScript exporter removed")
        return real_export(*args, dynamo=dynamo, **kwargs)

    monkeypatch.setattr(export_module.torch.onnx, "export", torchscript_unavailable)
    max_diff = export_onnx(_Linear(), tmp_path / "dynamo.onnx", opset=18)
    assert calls == [False, True]
    assert max_diff <= 1e-4
    session = onnxruntime.InferenceSession(str(tmp_path / "dynamo.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(None, {"data": np.zeros((3, 3, 16, 16), np.float32)})[0].shape == (3, 4)
