"""Errors of the KG plugin; each message names the problem and the fix."""

from __future__ import annotations

from simskip_core.errors import SimSkipError

__all__ = ["DatasetMismatchError", "KGInputError", "UnsupportedModelError", "UntrainedModelError"]


class KGInputError(SimSkipError, ValueError):
    """Bad input to the KG plugin: wrong shapes, NaN or Inf embeddings, unknown options."""


class DatasetMismatchError(KGInputError):
    """The model and the triples given with it come from different datasets (or id mappings)."""


class UntrainedModelError(KGInputError):
    """The model ranks its own training triples no better than chance: it was never trained."""


class UnsupportedModelError(SimSkipError, TypeError):
    """The model has no plain embedding table to refine (e.g. NodePiece, CompGCN, a non-PyKEEN object)."""
