"""Input checks shared by every public entry point: clear errors that name the problem and the fix."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

__all__ = ["as_matrix", "check_dim", "check_finite"]

_CHUNK = 65536


def _describe(x: Any) -> str:
    return (
        f"{type(x).__name__} with shape {tuple(getattr(x, 'shape', ()))} and dtype {getattr(x, 'dtype', '?')}"
    )


def as_matrix(x: Any, *, name: str = "X", copy: bool = False) -> np.ndarray:
    """Return ``x`` as a 2-D float32 numpy array after checking shape, dtype and finiteness.

    Accepts numpy arrays (including ``np.memmap``) and torch tensors. Rejects 1-D or 3-D input,
    integer or boolean dtypes, empty input and rows holding NaN or Inf, each with a message that
    says what was wrong and how to fix it.
    """
    torch = sys.modules.get("torch")  # a tensor exists only if torch is imported; importing it costs ~1 s
    if torch is not None and isinstance(x, torch.Tensor):
        if x.is_complex():
            raise TypeError(
                f"{name} is a complex tensor; pass real-valued embeddings (e.g. torch.view_as_real)."
            )
        if not x.is_floating_point():
            raise TypeError(
                f"{name} has integer/boolean dtype {x.dtype}; embeddings must be floating point. "
                f"Convert with {name}.float() if the integers really are feature values."
            )
        arr = x.detach().cpu().numpy()
    elif isinstance(x, np.ndarray):
        arr = x
    else:
        raise TypeError(f"{name} must be a numpy array, np.memmap or torch tensor, got {type(x).__name__}.")
    if arr.ndim != 2:
        hint = "reshape it to (1, d) for one vector" if arr.ndim == 1 else "flatten it to (n, d) first"
        raise ValueError(f"{name} must be 2-D (n_samples, dim), got {_describe(arr)}; {hint}.")
    if np.iscomplexobj(arr):
        raise TypeError(
            f"{name} is complex; pass real-valued embeddings (e.g. concatenate real and imaginary parts)."
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(
            f"{name} has dtype {arr.dtype}; embeddings must be floating point. "
            f"Convert with {name}.astype(np.float32) if the integers really are feature values."
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(
            f"{name} is empty ({_describe(arr)}); pass at least one row with at least one feature."
        )
    check_finite(arr, name=name)
    if arr.dtype != np.float32 or copy or isinstance(arr, np.memmap):
        arr = np.array(arr, dtype=np.float32, copy=True)
    return arr


def check_finite(arr: np.ndarray, *, name: str = "X") -> None:
    """Raise ``ValueError`` naming the first rows that hold NaN or Inf (checked in chunks, so memmaps work)."""
    for start in range(0, arr.shape[0], _CHUNK):
        block = np.asarray(arr[start : start + _CHUNK])
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            rows = (np.flatnonzero(bad)[:5] + start).tolist()
            total = int(bad.sum())
            raise ValueError(
                f"{name} holds NaN or Inf values in {total}+ row(s), first at rows {rows}; "
                "drop or impute these rows before refining."
            )


def check_dim(arr: np.ndarray, expected: int, *, name: str = "X", what: str = "the fitted model") -> None:
    """Raise ``ValueError`` when ``arr`` has another number of columns than ``expected``."""
    if arr.shape[1] != expected:
        raise ValueError(
            f"{name} has dimension {arr.shape[1]} but {what} expects {expected}; "
            "embed with the same encoder the refiner was fitted on, or fit a new refiner."
        )
