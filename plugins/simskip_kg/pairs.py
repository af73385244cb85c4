"""KG-aware positive pairs: entities that share a triple, as a pair signal for the multi-similarity loss."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["neighbour_pairs"]


def neighbour_pairs(mapped_triples: Any, num_entities: int, *, top_k: int | None = None) -> np.ndarray:
    """Unordered entity pairs ``(i, j)``, ``i < j``, that appear together as head and tail of a triple.

    Args:
        mapped_triples: ``(m, 3)`` id triples (numpy or torch), usually ``dataset.training.mapped_triples``
            (never the test triples: they are what the evaluation ranks).
        num_entities: number of entities (ids must lie in ``[0, num_entities)``).
        top_k: keep, for each entity, only its ``top_k`` neighbours sharing the most triples (a pair
            survives when either end keeps it). Small dense graphs such as Nations connect almost every
            pair, so an unweighted neighbourhood says little; None keeps every pair.

    Returns:
        int64 array ``(p, 2)``, sorted, without self-pairs (self-loop triples are ignored).
    """
    triples = np.asarray(mapped_triples.cpu() if hasattr(mapped_triples, "cpu") else mapped_triples)
    if triples.ndim != 2 or triples.shape[1] != 3:
        raise ValueError(f"mapped_triples must have shape (m, 3), got {triples.shape}.")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be a positive number of neighbours or None, got {top_k}.")
    heads, tails = triples[:, 0].astype(np.int64), triples[:, 2].astype(np.int64)
    if triples.size and (min(heads.min(), tails.min()) < 0 or max(heads.max(), tails.max()) >= num_entities):
        raise ValueError(f"mapped_triples hold entity ids outside [0, {num_entities}).")
    keep = heads != tails
    lo, hi = np.minimum(heads[keep], tails[keep]), np.maximum(heads[keep], tails[keep])
    codes, counts = np.unique(lo * num_entities + hi, return_counts=True)
    pairs = np.stack([codes // num_entities, codes % num_entities], axis=1).astype(np.int64)
    if top_k is None or len(pairs) == 0:
        return pairs
    # Every pair is incident to both its ends: rank each entity's pairs by shared-triple count (ties
    # by pair order) over both columns at once, and keep a pair when either end ranks it in its top_k.
    index = np.concatenate([np.arange(len(pairs)), np.arange(len(pairs))])
    ends = np.concatenate([pairs[:, 0], pairs[:, 1]])
    order = np.lexsort((index, -np.concatenate([counts, counts]), ends))
    sorted_ends = ends[order]
    rank = np.arange(len(order)) - np.searchsorted(sorted_ends, sorted_ends, side="left")
    chosen = np.zeros(len(pairs), dtype=bool)
    chosen[index[order[rank < top_k]]] = True
    return pairs[chosen]
