"""Small helpers shared by the backbone families (argument checks, feature-map size arithmetic)."""

from __future__ import annotations

import math


def check_input_size(input_size: object, minimum: int, owner: str) -> tuple[int, int]:
    """``input_size`` as an (H, W) tuple of ints >= ``minimum``; else ValueError naming ``owner``."""
    try:
        values = tuple(input_size)  # type: ignore[arg-type]
    except TypeError:
        values = ()
    valid = len(values) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    if not valid or min(values) < minimum:
        raise ValueError(
            f"{owner}: input_size must be (height, width) with ints >= {minimum}, got {input_size!r}"
        )
    return (values[0], values[1])


def check_positive(value: object, name: str, owner: str, kind: type = int) -> None:
    """Raise ValueError unless ``value`` is a positive ``kind`` (bool rejected)."""
    ok = (
        isinstance(value, (int, float) if kind is float else int)
        and not isinstance(value, bool)
        and value > 0
    )
    if not ok:
        raise ValueError(f"{owner}: {name} must be a positive {kind.__name__}, got {value!r}")


def halve(size: int, times: int) -> int:
    """Spatial size after ``times`` stride-2 convolutions that map n -> ceil(n / 2).

    Holds for 3x3/padding-1 and 1x1/padding-0 kernels: floor((n + 2p - k) / 2) + 1 = ceil(n / 2).
    """
    for _ in range(times):
        size = math.ceil(size / 2)
    return size
