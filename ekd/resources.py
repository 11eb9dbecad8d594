"""Peak memory of a fit, for the cost columns of the comparison table.

On a CUDA device the figure is the peak of memory allocated by tensors on that device
(``torch.cuda.max_memory_allocated``, reset at fit start): what the training needs, not what the
caching allocator keeps. On the CPU it is the peak resident set size of the process during the fit:
Linux's ``VmHWM`` (``/proc/self/status``), reset at fit start by writing 5 to
``/proc/self/clear_refs``. Where that reset is not possible, or the kernel accepts the write but
leaves the peak where it was (seen on some sandboxed kernels), the figure would be the process's
lifetime peak (which in a multirun process includes earlier jobs), so none is recorded instead.
The CPU figure is the whole process's: in a process that runs several fits one after another
(``ekd-demo``'s workers, a local multirun) it includes what earlier fits left allocated.
``ekd.run.run`` frees its own objects before it returns (until 2026-12-01 it did not, and such a
process kept every earlier run's verification sets), so what remains is memory the allocator keeps;
the cleanest comparison is still between runs made in separate processes.
"""

from __future__ import annotations

from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
# After a real reset the peak equals the RSS of that moment; more than this above it means the
# write was ignored (a few MiB of slack for memory another thread frees between the two reads).
_RESET_SLACK_MIB = 16.0


def _cuda(device: torch.device | str | None) -> bool:
    return device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available()


def reset_peak_memory(device: torch.device | str | None) -> bool:
    """Start a new peak for ``device`` (a CUDA device, else this process's RSS); False when impossible."""
    if _cuda(device):
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        _CLEAR_REFS.write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        return False
    fields = _status_mib()  # one read: the peak and the RSS of the same moment
    peak, current = fields.get("VmHWM"), fields.get("VmRSS")
    return peak is not None and current is not None and peak - current <= _RESET_SLACK_MIB


def _status_mib() -> dict[str, float]:
    """The ``kB`` fields of ``/proc/self/status`` (VmHWM, VmRSS, ...) in MiB; empty off Linux."""
    try:
        lines = _STATUS.read_text().splitlines()
    except OSError:
        return {}
    fields = {}
    for line in lines:
        name, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB":
            fields[name] = int(parts[0]) / 1024.0
    return fields


def peak_rss_mib() -> float | None:
    """This process's peak resident set size (VmHWM) in MiB; None off Linux."""
    return _status_mib().get("VmHWM")


def peak_memory_mib(device: torch.device | str | None, was_reset: bool) -> float | None:
    """The peak since :func:`reset_peak_memory` in MiB (None when the reset was impossible)."""
    if not was_reset:
        return None
    if _cuda(device):
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mib()
