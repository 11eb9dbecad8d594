"""ekd-toy and the angular-margin notebook run end to end with tiny settings."""

import os
from pathlib import Path

import numpy as np
import pytest

from ekd.cli import toy

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "angular_margin_toy.ipynb"


def test_toy_cli_writes_a_png(tmp_path, capsys):
    output = tmp_path / "toy.png"
    toy.main(["--output", str(output), "--steps", "3", "--classes", "3"])
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    for name in toy.TOY_HEADS:
        assert name in printed
    assert f"wrote {output}" in printed


def test_toy_cli_rejects_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        toy.main(["--output", str(tmp_path / "x.png"), "--steps", "0"])
    with pytest.raises(SystemExit):
        toy.main(["--heads", "nohead"])


def test_toy_results_shapes_and_angular_gap():
    result = toy.train_toy("cosface", steps=2, classes=3)
    assert result.features.shape == (300, 2) and result.centres.shape == (3, 2)
    assert 0.0 <= result.accuracy <= 1.0
    # three classes in sectors around 0, 120 and 240 degrees, each 20 degrees wide: gaps of 100 degrees
    angles = np.radians(np.concatenate([np.linspace(-10, 10, 5) + c for c in (0, 120, 240)]))
    features = np.stack([np.cos(angles), np.sin(angles)], 1)
    labels = np.repeat([0, 1, 2], 5)
    assert toy._min_angular_gap(features, labels) == pytest.approx(100.0)
    interleaved = np.array([0, 1, 0, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2])
    assert toy._min_angular_gap(features, interleaved) == 0.0


def test_target_curves_come_from_the_heads():
    theta = np.linspace(0.0, np.pi, 7)
    curves = toy.target_curves(theta)
    np.testing.assert_allclose(curves["normface"], np.cos(theta), atol=1e-12)
    np.testing.assert_allclose(curves["cosface"], np.cos(theta) - 0.35, atol=1e-12)
    assert np.all(np.diff(curves["sphereface"]) < 0) and np.all(np.diff(curves["arcface"]) < 0)


def test_notebook_executes_without_stored_outputs(monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code_cells)
    monkeypatch.setenv("EKD_TOY_STEPS", "3")
    monkeypatch.setenv("EKD_TOY_CLASSES", "3")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = nbclient.NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute(env=dict(os.environ))
    printed = "".join(out.get("text", "") for cell in code_cells for out in cell.outputs)
    assert "arcface" in printed and "sphereface" in printed
