"""Graph operations on numpy/scipy: input checks, normalised adjacency, neighbour averaging,
SGC/APPNP-style propagation and the spectral embedding of a graph.

All functions take ``edge_index`` as a (2, E) integer array or tensor (PyG's convention) and treat the
graph as undirected (each edge is used in both directions, duplicates count once).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from simskip_core.validation import as_matrix

__all__ = [
    "adjacency",
    "check_edge_index",
    "check_node_features",
    "edge_pairs",
    "neighbour_average",
    "normalized_adjacency",
    "propagate",
    "spectral_embedding",
]


def check_edge_index(edge_index: Any, num_nodes: int, *, name: str = "edge_index") -> np.ndarray:
    """Return ``edge_index`` as an int64 (2, E) numpy array after checking shape, dtype and range.

    Raises:
        ValueError: not (2, E), or an index is negative or >= ``num_nodes`` (the message names the
            first offending edge).
        TypeError: not an integer array/tensor.
    """
    if isinstance(edge_index, torch.Tensor):
        edge_index = edge_index.detach().cpu().numpy()
    arr = np.asarray(edge_index)
    if arr.ndim != 2 or arr.shape[0] != 2:
        hint = " (transpose it: PyG uses shape (2, E))" if arr.ndim == 2 and arr.shape[1] == 2 else ""
        raise ValueError(f"{name} must have shape (2, E), got {arr.shape}{hint}.")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integer node indices, got dtype {arr.dtype}.")
    arr = arr.astype(np.int64, copy=False)
    if num_nodes < 1:
        raise ValueError(f"the graph must have at least one node, got num_nodes={num_nodes}.")
    if arr.size:
        bad = np.flatnonzero((arr < 0).any(axis=0) | (arr >= num_nodes).any(axis=0))
        if bad.size:
            e = int(bad[0])
            raise ValueError(
                f"{name} holds {bad.size} edge(s) with node indices outside [0, {num_nodes}), "
                f"first edge {e}: ({arr[0, e]}, {arr[1, e]}). Check num_nodes and that the edges were re-indexed after subsetting."
            )
    return arr


def check_node_features(x: Any, num_nodes: int, *, name: str = "x") -> np.ndarray:
    """Return node features as a float32 (n, d) array; their row count must equal the node count.

    Raises:
        ValueError: wrong number of rows, not 2-D, NaN/Inf; TypeError: not floating point.
    """
    arr = as_matrix(x, name=name)
    if arr.shape[0] != num_nodes:
        raise ValueError(
            f"{name} has {arr.shape[0]} rows but the graph has {num_nodes} nodes; node embeddings must have "
            "one row per node, in node order."
        )
    return arr


def adjacency(edge_index: Any, num_nodes: int) -> sp.csr_matrix:
    """The symmetric binary adjacency matrix (self-loops dropped, duplicates counted once)."""
    ei = check_edge_index(edge_index, num_nodes)
    rows = np.concatenate([ei[0], ei[1]])
    cols = np.concatenate([ei[1], ei[0]])
    keep = rows != cols
    adj = sp.coo_matrix(
        (np.ones(int(keep.sum()), dtype=np.float64), (rows[keep], cols[keep])), shape=(num_nodes, num_nodes)
    )
    adj = adj.tocsr()
    adj.data[:] = 1.0  # duplicates collapse to 1
    return adj


def normalized_adjacency(
    edge_index: Any, num_nodes: int, *, self_loops: bool = True, kind: str = "sym"
) -> sp.csr_matrix:
    """GCN's propagation matrix: ``D^-1/2 (A + I) D^-1/2`` (``kind="sym"``) or ``D^-1 (A + I)`` (``"rw"``)."""
    if kind not in {"sym", "rw"}:
        raise ValueError(f"kind must be 'sym' or 'rw', got {kind!r}.")
    adj = adjacency(edge_index, num_nodes)
    if self_loops:
        adj = adj + sp.identity(num_nodes, format="csr")
    deg = np.asarray(adj.sum(axis=1)).ravel()
    with np.errstate(divide="ignore"):
        inv = np.where(deg > 0, 1.0 / deg, 0.0)
    if kind == "rw":
        return sp.diags(inv) @ adj
    half = np.sqrt(inv)
    return (sp.diags(half) @ adj @ sp.diags(half)).tocsr()


def neighbour_average(x: Any, edge_index: Any, *, num_nodes: int | None = None) -> np.ndarray:
    """The non-learned baseline ``x_i + mean_{j in N(i)} x_j`` (an isolated node keeps ``x_i``)."""
    n = int(num_nodes if num_nodes is not None else np.asarray(x).shape[0])
    feats = check_node_features(x, n)
    adj = adjacency(edge_index, n)
    deg = np.asarray(adj.sum(axis=1)).ravel()
    mean = (adj @ feats.astype(np.float64)) / np.maximum(deg, 1.0)[:, None]
    return (feats + mean).astype(np.float32)


def propagate(
    x: Any,
    edge_index: Any,
    *,
    hops: int = 2,
    alpha: float = 0.0,
    num_nodes: int | None = None,
) -> np.ndarray:
    """k-hop propagation of node features.

    ``alpha = 0``: SGC, ``S^k x`` with ``S = D^-1/2 (A + I) D^-1/2``.
    ``alpha > 0``: APPNP's personalised-PageRank iteration ``h <- (1 - alpha) S h + alpha x``, k times.
    ``hops = 0`` returns ``x``.
    """
    n = int(num_nodes if num_nodes is not None else np.asarray(x).shape[0])
    feats = check_node_features(x, n)
    if hops < 0:
        raise ValueError(f"hops must be >= 0, got {hops}.")
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}.")
    s = normalized_adjacency(edge_index, n)
    x64 = feats.astype(np.float64)
    h = x64
    for _ in range(hops):
        h = (1.0 - alpha) * (s @ h) + alpha * x64
    return h.astype(np.float32)


def spectral_embedding(
    edge_index: Any, num_nodes: int, dim: int = 16, *, dense_limit: int = 4000, seed: int = 0
) -> np.ndarray:
    """Laplacian eigenmaps of the graph alone: the eigenvectors of ``D^-1/2 A D^-1/2`` with the
    largest eigenvalues after the first (equivalently the normalised Laplacian's smallest), scaled by
    ``D^-1/2`` as in Ng-Jordan-Weiss / scikit-learn's ``spectral_embedding``. Signs are fixed so the
    output is deterministic. Isolated nodes get zero rows.
    """
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}.")
    n = int(num_nodes)
    adj = adjacency(edge_index, n)
    deg = np.asarray(adj.sum(axis=1)).ravel()
    with np.errstate(divide="ignore"):
        half = np.where(deg > 0, 1.0 / np.sqrt(deg), 0.0)
    m = sp.diags(half) @ adj @ sp.diags(half)
    k = min(dim + 1, n)
    if n <= dense_limit:
        vals, vecs = np.linalg.eigh(m.toarray())
        order = np.argsort(-vals)[:k]
    else:
        from scipy.sparse.linalg import eigsh

        v0 = np.random.default_rng(seed).standard_normal(n)
        vals, vecs = eigsh(m, k=k, which="LA", v0=v0)
        order = np.argsort(-vals)
    vecs = vecs[:, order[1:k]] if k > 1 else vecs[:, order]
    emb = vecs * half[:, None]
    signs = np.sign(emb[np.abs(emb).argmax(axis=0), np.arange(emb.shape[1])])
    emb = emb * np.where(signs == 0, 1.0, signs)
    if emb.shape[1] < dim:
        emb = np.pad(emb, ((0, 0), (0, dim - emb.shape[1])))
    return emb.astype(np.float32)


def edge_pairs(edge_index: Any, num_nodes: int) -> np.ndarray:
    """Undirected edges as an (m, 2) array of row pairs (i < j, unique, no self-loops): the
    ``edges`` positive-pair signal for the multi-similarity loss."""
    adj = sp.triu(adjacency(edge_index, num_nodes), k=1).tocoo()
    return np.stack([adj.row, adj.col], axis=1).astype(np.int64)
