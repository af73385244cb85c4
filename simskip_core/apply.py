"""One forward pass for every way a fitted map is applied: padded, blocked, preallocated, checked.

:meth:`SimSkip.transform <simskip_core.api.SimSkip.transform>` and the streaming apply
(:mod:`simskip_core.scale.stream`) both call :func:`apply_module`, so the same rows give the same bytes
whichever path computed them.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
from torch import nn

from simskip_core.errors import NonFiniteRowError
from simskip_core.validation import nonfinite_rows

__all__ = ["CPU_BLOCK_ROWS", "MIN_GEMM_ROWS", "apply_module", "forward_block"]

#: Short blocks (a final remainder) are zero-padded to this many rows before the forward pass, so every
#: row goes through the same matrix-multiply kernel whatever the block size: outputs do not depend on it.
MIN_GEMM_ROWS = 256
#: On the CPU rows are pushed through the model in blocks of this many rows: the hidden activations of a
#: block stay in cache, which keeps the forward pass at the matrix-multiply rate (a 65,536-row block ran
#: about 20 % slower). Rows are independent, so the output does not depend on it.
CPU_BLOCK_ROWS = 8192


def forward_block(
    module: nn.Module, rows: np.ndarray, device: torch.device | None = None, autocast: bool = False
) -> torch.Tensor:
    """``module(rows)`` on ``device`` (default CPU) without autograd, as a float32 CPU tensor.

    ``rows`` is a C-ordered float32 array; fewer than :data:`MIN_GEMM_ROWS` rows are zero-padded.
    """
    device = device or torch.device("cpu")
    count = rows.shape[0]
    if count < MIN_GEMM_ROWS:
        rows = np.concatenate([rows, np.zeros((MIN_GEMM_ROWS - count, rows.shape[1]), dtype=np.float32)])
    x = torch.from_numpy(rows)
    if device.type != "cpu":
        x = x.to(device, non_blocking=True)
    ctx = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if autocast
        else contextlib.nullcontext()
    )
    with torch.inference_mode(), ctx:
        y = module(x)
    return y[:count].to(device="cpu", dtype=torch.float32)


def _rows_as_float32(x: Any, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of ``x`` as a new C-ordered float32 array (the source is never modified).

    Values beyond float32's range become Inf without a warning; :func:`apply_module` then names the row.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        return np.array(x[start:stop], dtype=np.float32, order="C", copy=True)


def apply_module(
    module: nn.Module,
    x: Any,
    *,
    device: torch.device | None = None,
    autocast: bool = False,
    out: np.ndarray | None = None,
    block_rows: int | None = None,
    name: str = "X",
    row_offset: int = 0,
) -> np.ndarray:
    """Apply ``module`` to the rows of ``x`` (array, memmap or read-only array) block by block.

    Each block is read from ``x``, cast to float32 and checked: a row that is not finite after the cast
    (NaN, Inf, or a float64 value beyond float32's range) raises ``ValueError`` naming the row
    (numbered from ``row_offset``); so does a non-finite output row. The error is a
    :class:`~simskip_core.errors.NonFiniteRowError` (a ``ValueError``) carrying the row's index. The output is written into
    ``out`` (preallocated here when None), so memory stays at input + output + one block.

    Args:
        module: the fitted map; put in eval mode.
        x: (n, d) rows; only ``x[start:stop]`` slices are read.
        device: where to compute (default CPU); the GPU takes ``block_rows`` or the whole input.
        autocast: bfloat16 autocast on a GPU.
        out: (n, d') float32 array (or memmap) to fill.
        block_rows: rows per forward pass (default :data:`CPU_BLOCK_ROWS` on the CPU).
        name: what ``x`` is called in error messages.
        row_offset: index of ``x``'s first row in error messages (for chunks of a larger input).
    """
    device = device or torch.device("cpu")
    n = int(x.shape[0])
    block = block_rows or (CPU_BLOCK_ROWS if device.type == "cpu" else max(n, 1))
    module.eval()
    for start in range(0, n, block):
        stop = min(start + block, n)
        rows = _rows_as_float32(x, start, stop)
        _check_rows(rows, name, row_offset + start, "holds NaN or Inf (after the cast to float32)", True)
        y = forward_block(module, rows, device, autocast).numpy()
        _check_rows(y, f"the refined {name}", row_offset + start, "is not finite", False)
        if out is None:
            out = np.empty((n, y.shape[1]), dtype=np.float32)
        out[start:stop] = y
    if out is None:  # no rows
        out = np.empty((0, int(x.shape[1])), dtype=np.float32)
    return out


def _check_rows(rows: np.ndarray, name: str, offset: int, problem: str, in_input: bool) -> None:
    bad = nonfinite_rows(rows)
    if bad.size:
        first = int(bad[0]) + offset
        raise NonFiniteRowError(
            f"{name} {problem} at row {first} ({int(bad.size)} bad row(s) in rows {offset}-{offset + len(rows) - 1}); "
            "drop or impute these rows, or use values within float32's range.",
            row=first,
            in_input=in_input,
        )
