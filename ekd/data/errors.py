"""Exceptions for bad data files.

Every error names the file and the record index, byte offset or key at fault, so that a user can
find the broken entry without a debugger. All derive from ``ValueError`` so generic callers that
catch bad input keep working.
"""

from __future__ import annotations


class DataError(ValueError):
    """Bad or inconsistent input data (a file, folder or configuration value)."""


class RecordIOError(DataError):
    """A malformed MXNet RecordIO ``.rec`` / ``.idx`` pair or one of its records."""


class BinFormatError(DataError):
    """A malformed insightface verification ``.bin`` file."""
