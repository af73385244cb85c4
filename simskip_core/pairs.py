"""Sources of positive pairs beyond the two augmented views.

* :func:`mutual_knn_pairs`: label-free, mutual k-nearest neighbours in the input embedding space.
* :class:`LabelSignal`: few-label mode, items sharing a known class label (supervised-contrastive style).
* :class:`GraphSignal`: external pairs a plugin supplies (graph edges, KG neighbourhoods).

Label-free and label-using signals are named apart by :attr:`PairSignal.uses_labels`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["GraphSignal", "LabelSignal", "PairSignal", "build_signals", "mutual_knn_pairs"]


class PairSignal:
    """A symmetric positive relation over the ``n`` training items.

    Attributes:
        name: the signal's name ("mutual_knn", "labels", "edges", ...).
        uses_labels: True when the signal is built from class labels (a label-using mode).
    """

    name: str
    uses_labels: bool = False

    def batch_mask(self, index: torch.Tensor) -> torch.Tensor:
        """(B, B) bool mask of positives among the items ``index`` (B,), diagonal False."""
        raise NotImplementedError

    def sample_partners(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One random positive partner per item of ``index`` (B,), or -1 where the item has none."""
        raise NotImplementedError


class GraphSignal(PairSignal):
    """Positives given as index pairs (edges), stored as a symmetric sparse adjacency without self-loops."""

    def __init__(self, name: str, pairs: np.ndarray, n: int, *, uses_labels: bool = False) -> None:
        pairs = _as_index_pairs(name, pairs)
        if pairs.size and (pairs.min() < 0 or pairs.max() >= n):
            raise ValueError(
                f"pairs for signal {name!r} index rows outside [0, {n}) (min {pairs.min()}, max {pairs.max()}); "
                "pairs must be row indices into the embeddings passed to fit()."
            )
        self.name = name
        self.uses_labels = uses_labels
        rows = np.concatenate([pairs[:, 0], pairs[:, 1]])
        cols = np.concatenate([pairs[:, 1], pairs[:, 0]])
        keep = rows != cols
        adj = sp.csr_matrix((np.ones(int(keep.sum()), dtype=bool), (rows[keep], cols[keep])), shape=(n, n))
        adj.sum_duplicates()
        self.adjacency = adj
        self._indptr = torch.from_numpy(adj.indptr.astype(np.int64))
        self._indices = torch.from_numpy(adj.indices.astype(np.int64))

    @property
    def num_pairs(self) -> int:
        """Number of distinct unordered pairs."""
        return int(self.adjacency.nnz // 2)

    def batch_mask(self, index: torch.Tensor) -> torch.Tensor:
        idx = index.numpy()
        block = self.adjacency[idx][:, idx].toarray()  # (B, B)
        mask = torch.from_numpy(block)
        mask.fill_diagonal_(False)
        return mask

    def sample_partners(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        start = self._indptr[index]
        degree = self._indptr[index + 1] - start
        offset = (torch.rand(index.shape, generator=generator) * degree.clamp(min=1)).long()
        partner = (
            self._indices[(start + offset).clamp(max=max(len(self._indices) - 1, 0))]
            if len(self._indices)
            else start
        )
        return torch.where(degree > 0, partner, torch.full_like(index, -1))


def _as_index_pairs(name: str, pairs: np.ndarray) -> np.ndarray:
    """``pairs`` as an (m, 2) int64 array; floats are accepted only when every value is a whole number."""
    arr = np.asarray(pairs)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"pairs for signal {name!r} must have shape (m, 2), got {arr.shape}.")
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64, copy=False)
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(
            f"pairs for signal {name!r} must be integer row indices, got dtype {arr.dtype}; "
            "pass an (m, 2) integer array."
        )
    fractional = ~np.isfinite(arr) | (arr != np.round(arr))
    if fractional.any():
        row = int(np.flatnonzero(fractional.any(axis=1))[0])
        raise TypeError(
            f"pairs for signal {name!r} must be integer row indices, but row {row} is {arr[row].tolist()}; "
            "indices are never rounded: pass an (m, 2) integer array."
        )
    return arr.astype(np.int64)


class LabelSignal(PairSignal):
    """Items sharing a known class label are positives; ``-1`` marks an unlabelled item (few-label mode)."""

    uses_labels = True

    def __init__(self, labels: np.ndarray, name: str = "labels") -> None:
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise ValueError(f"labels must be 1-D (n,), got shape {labels.shape}.")
        if not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(
                f"labels must be integers with -1 for unlabelled items, got dtype {labels.dtype}."
            )
        if (labels >= 0).sum() < 2:
            raise ValueError("few-label mode needs at least two labelled items (labels >= 0).")
        self.name = name
        self.labels = torch.from_numpy(labels.astype(np.int64))
        order = torch.argsort(self.labels, stable=True)
        self._sorted = order
        sorted_labels = self.labels[order]
        self._classes, counts = torch.unique_consecutive(sorted_labels, return_counts=True)
        self._starts = torch.cumsum(counts, 0) - counts
        self._counts = counts

    def batch_mask(self, index: torch.Tensor) -> torch.Tensor:
        lab = self.labels[index]  # (B,)
        mask = (lab[:, None] == lab[None, :]) & (lab[:, None] >= 0)
        mask.fill_diagonal_(False)
        return mask

    def sample_partners(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        lab = self.labels[index]
        pos = torch.searchsorted(self._classes, lab.clamp(min=0)).clamp(max=len(self._classes) - 1)
        count = self._counts[pos]
        # draw among the count - 1 other members of the class: the item itself is swapped for the last member
        offset = (torch.rand(index.shape, generator=generator) * (count - 1).clamp(min=1)).long()
        partner = self._sorted[self._starts[pos] + offset]
        last = self._sorted[self._starts[pos] + count - 1]
        partner = torch.where(partner == index, last, partner)
        valid = (lab >= 0) & (count > 1)
        return torch.where(valid, partner, torch.full_like(index, -1))


def mutual_knn_pairs(x: np.ndarray, k: int, *, chunk: int = 4096) -> np.ndarray:
    """Pairs (i, j) where j is among i's k nearest cosine neighbours and i among j's; shape (m, 2), i < j."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    n = x.shape[0]
    if n < 2:
        raise ValueError("mutual k-NN needs at least two items.")
    k = min(k, n - 1)
    # a new float32 tensor: read-only or memory-mapped input is copied, never shared with torch
    unit = torch.nn.functional.normalize(torch.tensor(np.asarray(x), dtype=torch.float32), dim=1)
    neighbours = torch.empty((n, k), dtype=torch.long)
    for start in range(0, n, chunk):
        sims = unit[start : start + chunk] @ unit.T  # (chunk, n)
        own = torch.arange(start, min(start + chunk, n))
        sims[torch.arange(len(own)), own] = -float("inf")
        neighbours[start : start + chunk] = sims.topk(k, dim=1).indices
    rows = np.repeat(np.arange(n), k)
    cols = neighbours.numpy().reshape(-1)
    knn = sp.csr_matrix((np.ones(len(rows), dtype=bool), (rows, cols)), shape=(n, n))
    mutual = sp.triu(knn.multiply(knn.T), k=1).tocoo()
    return np.stack([mutual.row, mutual.col], axis=1).astype(np.int64)


def build_signals(
    n: int,
    *,
    x: np.ndarray,
    mutual_knn: int | None = None,
    pairs: Mapping[str, np.ndarray] | None = None,
    labels: np.ndarray | None = None,
) -> list[PairSignal]:
    """All positive-pair signals for a fit: mutual k-NN (label-free), external pairs, and labels."""
    if pairs is not None and not isinstance(pairs, Mapping):
        raise TypeError(
            f"pairs must be a dict mapping a signal name to an (m, 2) integer array of row indices, "
            f"e.g. pairs={{'edges': E}}; got {type(pairs).__name__}."
        )
    signals: list[PairSignal] = []
    if mutual_knn:
        signals.append(GraphSignal("mutual_knn", mutual_knn_pairs(x, mutual_knn), n))
    for name, arr in (pairs or {}).items():
        if name in {"views", "labels", "mutual_knn"}:
            raise ValueError(f"pair signal name {name!r} is reserved; rename it (e.g. 'edges').")
        signals.append(GraphSignal(name, arr, n))
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise ValueError(
                f"labels must have shape ({n},) to match X, got {labels.shape}; use -1 for unlabelled rows."
            )
        signals.append(LabelSignal(labels))
    return signals
