"""Peak memory of a fit (ekd.resources): the CPU peak RSS follows an allocation and resets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import ekd.resources as resources
from ekd.resources import peak_memory_mib, peak_rss_mib, reset_peak_memory


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise AssertionError("no VmRSS in /proc/self/status")


def test_cpu_peak_follows_an_allocation_and_resets():
    if not reset_peak_memory("cpu"):
        pytest.skip("this kernel cannot reset the peak RSS (no /proc/self/clear_refs, or ignored)")
    # Compared with the RSS, not with the peak just after the reset: memory other threads free
    # meanwhile lowers the RSS but not the peak, and an allocation may stay under that peak.
    rss_before = _rss_mib()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    during = peak_memory_mib("cpu", True)
    assert during >= rss_before + 60
    del block
    assert reset_peak_memory("cpu")
    assert peak_memory_mib("cpu", True) < during - 50  # the freed block no longer counts
    assert peak_rss_mib() is not None


def _fake_proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hwm_kb: int, rss_kb: int) -> None:
    status = tmp_path / "status"
    status.write_text(f"Name:\tpython\nVmHWM:\t{hwm_kb} kB\nVmRSS:\t{rss_kb} kB\n")
    monkeypatch.setattr(resources, "_STATUS", status)
    monkeypatch.setattr(resources, "_CLEAR_REFS", tmp_path / "clear_refs")  # a write that resets nothing


def test_a_reset_the_kernel_ignores_records_no_figure(tmp_path, monkeypatch):
    _fake_proc(tmp_path, monkeypatch, hwm_kb=1_484_104, rss_kb=900_000)  # lifetime peak kept
    assert not reset_peak_memory("cpu")


def test_a_reset_that_took_effect_is_trusted(tmp_path, monkeypatch):
    _fake_proc(tmp_path, monkeypatch, hwm_kb=900_100, rss_kb=900_000)
    assert reset_peak_memory("cpu")
    assert peak_memory_mib("cpu", True) == pytest.approx(900_100 / 1024)


def test_no_figure_without_a_reset():
    assert peak_memory_mib("cpu", was_reset=False) is None
