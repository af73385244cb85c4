"""The :class:`EmbeddingSet`: the one data type that flows between host plugins and the core."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simskip_core.validation import as_matrix

__all__ = ["EmbeddingSet"]


@dataclass
class EmbeddingSet:
    """Frozen embeddings of ``n`` items with optional ids, labels and positive-pair signals.

    Attributes:
        vectors: float32 array of shape (n, d).
        ids: optional item identifiers (texts, entity labels, node ids), length n.
        labels: optional integer class labels of shape (n,); ``-1`` marks an unlabelled item.
        pairs: named positive-pair signals, each an int64 array of shape (m, 2) of row indices
            (graph edges, KG neighbours, ...). Symmetry is not required.
        meta: free-form provenance (encoder name, data source and version, ...).
    """

    vectors: np.ndarray
    ids: Sequence[Any] | None = None
    labels: np.ndarray | None = None
    pairs: Mapping[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.vectors = as_matrix(self.vectors, name="EmbeddingSet.vectors")
        n = self.vectors.shape[0]
        if self.ids is not None and len(self.ids) != n:
            raise ValueError(
                f"EmbeddingSet has {n} vectors but {len(self.ids)} ids; they must match row for row."
            )
        if self.labels is not None:
            labels = np.asarray(self.labels)
            if labels.shape != (n,):
                raise ValueError(f"EmbeddingSet labels must have shape ({n},), got {labels.shape}.")
            if not np.issubdtype(labels.dtype, np.integer):
                raise TypeError(
                    f"EmbeddingSet labels must be integers (-1 = unlabelled), got dtype {labels.dtype}."
                )
            self.labels = labels.astype(np.int64)
        checked = {}
        for key, value in self.pairs.items():
            arr = np.asarray(value)
            if arr.ndim != 2 or arr.shape[1] != 2:
                raise ValueError(f"pair signal {key!r} must have shape (m, 2), got {arr.shape}.")
            if arr.size and (arr.min() < 0 or arr.max() >= n):
                raise ValueError(
                    f"pair signal {key!r} holds indices outside [0, {n}): min {arr.min()}, max {arr.max()}."
                )
            checked[key] = arr.astype(np.int64)
        self.pairs = checked

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        """The embedding dimension d."""
        return int(self.vectors.shape[1])

    def subset(self, index: np.ndarray) -> EmbeddingSet:
        """Rows ``index`` of this set; pair signals are kept only where both ends survive."""
        index = np.asarray(index, dtype=np.int64)
        remap = np.full(len(self), -1, dtype=np.int64)
        remap[index] = np.arange(len(index))
        pairs = {}
        for key, arr in self.pairs.items():
            mapped = remap[arr]
            pairs[key] = mapped[(mapped >= 0).all(axis=1)]
        return EmbeddingSet(
            vectors=self.vectors[index],
            ids=None if self.ids is None else [self.ids[i] for i in index],
            labels=None if self.labels is None else self.labels[index],
            pairs=pairs,
            meta=dict(self.meta),
        )
