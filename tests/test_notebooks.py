"""Execute every notebook in notebooks/ with nbclient on tiny settings (parameters via environment
variables), and check that the stored notebooks carry no outputs."""

from __future__ import annotations

import math
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from ekd.report import RunResults, write_results

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))

# Tiny settings per notebook (each notebook reads its parameters from these variables).
TINY_ENV = {
    "EKD_TOY_STEPS": "3",  # angular_margin_toy
    "EKD_TOY_CLASSES": "4",
    "MPLBACKEND": "Agg",
    "WANDB_MODE": "disabled",
    "OMP_NUM_THREADS": "1",
}


def _fabricate_sweep(root: Path) -> None:
    """Two methods x two seeds with metrics and ROC curves, in the results.json format."""
    for index, (method, seed, acc) in enumerate(
        [("none", 0, 0.80), ("none", 1, 0.82), ("ekd", 0, 0.85), ("ekd", 1, 0.86)]
    ):
        fpr = [0.0, 0.001, 0.01, 0.1, 1.0]
        roc = {"fpr": fpr, "tpr": [0.0, *(min(1.0, acc * math.sqrt(f) ** 0.2) for f in fpr[1:])]}
        write_results(
            root / str(index),
            RunResults(
                method=method,
                label={"none": "no KD", "ekd": "EKD"}[method],
                order={"none": 10.0, "ekd": 110.0}[method],
                dataset="synthetic",
                student="mobilefacenet",
                student_label="MobileFaceNet",
                teacher=None if method == "none" else "iresnet18",
                seed=seed,
                metrics={
                    name: {"accuracy": acc, "tpr_at_fpr": {"1e-2": acc - 0.1}}
                    for name in ("synth_frontal", "synth_pose")
                },
                roc={"synth_frontal": roc, "synth_pose": roc},
                params=91232,
                macs=16706176,
                throughput={"images_per_s": 500.0},
                wall_time_s=60.0,
            ),
        )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name} holds outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path, monkeypatch):
    sweep = tmp_path / "sweep"
    _fabricate_sweep(sweep)
    for key, value in {**TINY_ENV, "EKD_RESULTS_DIR": str(sweep)}.items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    if path.stem == "results_analysis":
        text = "".join(
            str(o.get("data", {}).get("text/markdown", "")) + str(o.get("text", ""))
            for c in notebook.cells
            for o in c.get("outputs", [])
        )
        # the table of the fabricated sweep: EKD mean 85.50 +- 0.71, +4.50 over no KD (81.00)
        assert "85.50 ± 0.71 (+4.50)" in text
        assert any("image/png" in o.get("data", {}) for c in notebook.cells for o in c.get("outputs", []))
