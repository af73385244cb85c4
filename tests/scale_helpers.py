"""Helpers shared by the streaming, Parquet and batch tests."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from simskip_core.refiner import SkipRefiner


def seeded_refiner(dim: int, seed: int = 0) -> SkipRefiner:
    """An untrained ``SkipRefiner(dim)`` whose last layer has normal(std=0.2) weights, drawn with ``seed``:
    a non-identity map without training, the same for the same seed."""
    torch.manual_seed(seed)
    refiner = SkipRefiner(dim)
    last = refiner.g[-1]
    assert isinstance(last, torch.nn.Linear)
    torch.nn.init.normal_(last.weight, std=0.2)
    return refiner.eval()


def forward(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """``module`` applied to ``x`` in float32 without gradients: the in-memory reference."""
    with torch.no_grad():
        return module(torch.from_numpy(x.astype(np.float32))).numpy()


def fixed_size_list(x: np.ndarray) -> pa.FixedSizeListArray:
    """The rows of ``x`` as an Arrow fixed-size-list column."""
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
