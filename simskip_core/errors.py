"""Exceptions with messages that name the problem and the fix."""

from __future__ import annotations

__all__ = ["CorruptModelError", "MissingDataError", "NonFiniteRowError", "SimSkipError"]


class SimSkipError(Exception):
    """Base class of simskip's own errors."""


class MissingDataError(SimSkipError, FileNotFoundError):
    """A dataset or weight file is not installed; the message says how to get it."""


class CorruptModelError(SimSkipError, ValueError):
    """A saved model directory is incomplete or unreadable; the message names the file."""


class NonFiniteRowError(SimSkipError, ValueError):
    """A row is NaN or Inf (as float32): ``row`` is its index, ``in_input`` says whether the input or the
    output of the map held it, so a caller can name the row its own way (an id, a file and line)."""

    def __init__(self, message: str, *, row: int, in_input: bool) -> None:
        super().__init__(message)
        self.row = row
        self.in_input = in_input
