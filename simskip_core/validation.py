"""Input checks shared by every public entry point: clear errors that name the problem and the fix."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

__all__ = ["as_matrix", "check_dim", "check_finite", "check_matrix", "nonfinite_rows"]

_CHUNK = 65536


def _describe(x: Any) -> str:
    return (
        f"{type(x).__name__} with shape {tuple(getattr(x, 'shape', ()))} and dtype {getattr(x, 'dtype', '?')}"
    )


def check_matrix(x: Any, *, name: str = "X", finite: bool = True) -> np.ndarray:
    """Check ``x`` like :func:`as_matrix` but return it without copying: memmaps stay lazy.

    Numpy arrays (including ``np.memmap`` and read-only arrays) come back as they are; a torch tensor
    comes back as a numpy array (a view of a CPU tensor; float16/bfloat16 and other float dtypes are
    cast to float32). ``finite=False`` skips the finiteness scan, for callers that check each block as
    they read it.
    """
    arr = _to_numpy(x, name)
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
    if finite:
        check_finite(arr, name=name)
    return arr


def as_matrix(x: Any, *, name: str = "X", copy: bool = False) -> np.ndarray:
    """Return ``x`` as a 2-D float32 numpy array in memory after checking shape, dtype and finiteness.

    Accepts numpy arrays (including ``np.memmap``, which is read into memory) and torch tensors.
    Rejects 1-D or 3-D input, integer or boolean dtypes, empty input and rows holding NaN or Inf or
    values beyond float32's range, each with a message that says what was wrong and how to fix it.
    Use :func:`check_matrix` to check without copying.
    """
    arr = check_matrix(x, name=name)
    if arr.dtype != np.float32 or copy or isinstance(arr, np.memmap):
        arr = np.array(arr, dtype=np.float32, copy=True)
    return arr


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """``x`` as a numpy array: arrays unchanged, tensors detached to the CPU (exotic floats as float32)."""
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
        tensor = x.detach().cpu()
        if tensor.dtype not in (torch.float32, torch.float64):
            tensor = tensor.to(torch.float32)  # bfloat16 has no numpy dtype
        return tensor.numpy()
    if isinstance(x, np.ndarray):
        return x
    raise TypeError(f"{name} must be a numpy array, np.memmap or torch tensor, got {type(x).__name__}.")


def nonfinite_rows(block: np.ndarray) -> np.ndarray:
    """Indices of the rows of a 2-D ``block`` that hold NaN or Inf (in its own dtype)."""
    return np.flatnonzero(~np.isfinite(block).all(axis=1))


def check_finite(arr: np.ndarray, *, name: str = "X") -> None:
    """Raise ``ValueError`` naming the first rows that are not finite as float32 (checked in chunks).

    NaN, Inf and float64 values beyond float32's range (which become Inf in the float32 refiner) are
    refused; memmaps are read chunk by chunk.
    """
    for start in range(0, arr.shape[0], _CHUNK):
        with np.errstate(over="ignore", invalid="ignore"):
            block = np.asarray(arr[start : start + _CHUNK]).astype(np.float32, copy=False)
        bad = nonfinite_rows(block)
        if bad.size:
            rows = (bad[:5] + start).tolist()
            total = int(bad.size)
            raise ValueError(
                f"{name} holds NaN or Inf values in {total}+ row(s), first at rows {rows} (values beyond "
                "float32's range, about 3.4e38, count as Inf); drop, impute or rescale these rows before refining."
            )


def check_dim(arr: np.ndarray, expected: int, *, name: str = "X", what: str = "the fitted model") -> None:
    """Raise ``ValueError`` when ``arr`` has another number of columns than ``expected``."""
    if arr.shape[1] != expected:
        raise ValueError(
            f"{name} has dimension {arr.shape[1]} but {what} expects {expected}; "
            "embed with the same encoder the refiner was fitted on, or fit a new refiner."
        )
