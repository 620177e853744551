"""Errors that carry a one-line, user-facing reason.

The CLI prints ``str(error)`` and exits non-zero, so every message names the file, field or record
and what was expected, and ends with what to do where that is not obvious.
"""
from __future__ import annotations


class MoldwatchError(Exception):
    """Base class: anything the CLI may show to a user as a one-line reason."""


class SchemaError(MoldwatchError):
    """The plant schema file itself is malformed."""


class DataError(MoldwatchError):
    """Input data does not match the plant schema (missing column, bad type, unknown maker...)."""


class StoreError(MoldwatchError):
    """The model store is missing, unreadable, tampered with or incompatible."""
