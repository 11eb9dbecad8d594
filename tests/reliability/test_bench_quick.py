"""Prepared benchmarks run end to end on tiny sizes on the CPU (as run_all.py --quick and a GPU run do)."""

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


def test_channels_last_bench_quick_on_a_fresh_data_cache(tmp_path):
    """Two whole ekd-train runs side by side (perf_common's helpers, shared with bench_teacher_cache)
    on a data cache neither has generated yet: one generates the benchmark, the other waits for it."""
    import os

    env = {**os.environ, "EKD_DATA_DIR": str(tmp_path / "data"), "WANDB_MODE": "disabled"}
    command = [sys.executable, str(BENCH / "bench_channels_last.py"), "--quick"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("| none |")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert len(cells) == 7 and cells[3].endswith("x") and cells[4].endswith("x")
    assert all(0.0 <= float(acc) <= 100.0 for acc in cells[6].split(" / "))


def test_pair_sets_bench_quick(tmp_path):
    """Both pair-set designs are generated, read and scored; the pooled one embeds fewer images."""
    command = [sys.executable, str(BENCH / "bench_pair_sets.py"), "--quick"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith(("| fresh", "| pooled"))]
    fresh, pooled = ([cell.strip() for cell in row.strip("|").split("|")] for row in rows)
    assert (fresh[1], fresh[2]) == ("120", "240")  # 3 sets x 40 fresh pairs: 2 new images a pair
    assert pooled[1] == "180" and int(pooled[2]) <= 3 * 10 * 3 * 2  # at most identities x images x sides
    assert "pooled / fresh:" in result.stdout
