"""Exceptions with messages that name the problem and the fix."""

from __future__ import annotations

__all__ = ["CorruptModelError", "MissingDataError", "SimSkipError"]


class SimSkipError(Exception):
    """Base class of simskip's own errors."""


class MissingDataError(SimSkipError, FileNotFoundError):
    """A dataset or weight file is not installed; the message says how to get it."""


class CorruptModelError(SimSkipError, ValueError):
    """A saved model directory is incomplete or unreadable; the message names the file."""
