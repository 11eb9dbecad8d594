"""Peak memory of a fit (ekd.resources): the CPU peak RSS follows an allocation and resets."""

from __future__ import annotations

import numpy as np
import pytest

from ekd.resources import peak_memory_mib, peak_rss_mib, reset_peak_memory


def test_cpu_peak_follows_an_allocation_and_resets():
    if not reset_peak_memory("cpu"):
        pytest.skip("no /proc/self/clear_refs here (not Linux, or not allowed)")
    before = peak_memory_mib("cpu", True)
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    during = peak_memory_mib("cpu", True)
    assert during - before >= 60
    del block
    assert reset_peak_memory("cpu")
    assert peak_memory_mib("cpu", True) < during - 50  # the freed block no longer counts
    assert peak_rss_mib() is not None


def test_no_figure_without_a_reset():
    assert peak_memory_mib("cpu", was_reset=False) is None
