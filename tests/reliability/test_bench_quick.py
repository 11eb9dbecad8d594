"""The prepared GPU benchmark runs end to end on tiny sizes on the CPU (what a lent GPU machine will run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_gpu_bench_quick_on_cpu(tmp_path):
    markdown = tmp_path / "gpu.md"
    command = [
        sys.executable,
        str(BENCH / "gpu_bench.py"),
        "--quick",
        "--device",
        "cpu",
        "--students",
        "mobilefacenet",
        "--precision",
        "32",
        "--markdown",
        str(markdown),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "device: CPU" in result.stdout
    text = markdown.read_text()
    for variant in ("mobilefacenet plain", "mobilefacenet distill cached", "mobilefacenet distill online"):
        assert f"| {variant} |" in text


def test_lightning_loop_bench_quick(tmp_path):
    """The Lightning-vs-raw-loop bench builds ekd-train's real Trainer (config, callbacks, logger)."""
    markdown = tmp_path / "lightning.md"
    command = [
        sys.executable,
        str(BENCH / "bench_lightning_loop.py"),
        "--quick",
        "--logger",
        "csv",
        "--markdown",
        str(markdown),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    text = markdown.read_text()
    for variant in ("raw PyTorch loop", "ekd-train's Trainer", "bare Trainer.fit", "the raw loop's math"):
        assert variant in text
