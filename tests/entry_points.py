"""Calling a command's entry point in the test's process, as a subprocess would see it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def call_like_a_process(entry: Callable[[], Any], capture: Any) -> tuple[int, str, str]:
    """Run ``entry()`` and return (exit code, stdout, stderr) as ``python -m ...`` would: 0 when it
    returns, the code of a ``SystemExit``, and for ``sys.exit("text")`` code 1 with the text on stderr
    (the interpreter prints it). ``capture``: pytest's ``capsys`` or ``capfd``."""
    capture.readouterr()
    message = ""
    try:
        entry()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        message = exit_.code if isinstance(exit_.code, str) else ""
    out, err = capture.readouterr()
    return code, out, err + message
