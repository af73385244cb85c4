"""Auto mode for graphs: the graph's own candidates next to the core's, and a probe that needs no labels.

:class:`GraphAutoSimSkip` compares, on one graph:

* the core's candidates (:meth:`SimSkip.candidate_maps <simskip_core.api.SimSkip.candidate_maps>`):
  the identity, the label-free baselines, the refiner and its blends;
* the graph's: SGC propagation ``S^k x`` for every ``k`` in ``hops``, neighbour averaging
  ``x + mean(N(x))``, the spectral embedding of the graph alone and the structure-aware refiner
  (:class:`~simskip_graph.structure.StructureAwareSimSkip`);

and keeps the identity unless a candidate beats it beyond the validation noise
(:func:`~simskip_core.selection.select_candidate`). The probe is, in order of precedence, the
``probe=`` given; with ``labels=``, a label probe on the labelled nodes (no candidate is trained on
labels, so no labelled node that scores a candidate trained it); otherwise link prediction on held-out
edges (:class:`LinkPredictionProbe`): a seeded share of the edges is hidden from every candidate that
uses the structure (propagation, averaging, spectral, the structure-aware refiner's propagation and
its edge positives) and the probe scores how well cosine similarity ranks those hidden edges above
random node pairs (AUC).

Link prediction measures whether a map keeps linked nodes close; it says nothing about node labels.
On a graph whose labels oppose its edges (heterophily) it prefers smoothing that hurts
classification: pass ``labels=`` (a few labelled nodes) there.

After selection :meth:`GraphAutoSimSkip.transform` applies the chosen candidate to the graph it is
given, over all of its edges (the held-out edges were hidden while fitting and scoring only).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simskip_core.api import SimSkip
from simskip_core.apply import apply_module
from simskip_core.selection import LabelProbe, Probe, select_candidate
from simskip_graph.ops import (
    check_edge_index,
    check_node_features,
    edge_pairs,
    neighbour_average,
    normalized_adjacency,
    spectral_embedding,
)
from simskip_graph.structure import StructureAwareSimSkip, fit_kwargs_for

__all__ = ["GraphAutoSimSkip", "LinkPredictionProbe", "split_edges"]

logger = logging.getLogger(__name__)

#: Held-out edges a link-prediction probe scores per split at most (a call is O(max_edges)).
DEFAULT_PROBE_EDGES = 2000


def split_edges(
    edge_index: Any, num_nodes: int, *, fraction: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Hide a seeded ``fraction`` of the undirected edges: returns ``(kept_edge_index (2, E'), held (m, 2))``.

    Raises ``ValueError`` when ``fraction`` is not in (0, 1) or the graph has fewer than 2 edges.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction}.")
    pairs = edge_pairs(edge_index, num_nodes)
    if len(pairs) < 2:
        raise ValueError(
            f"the graph has {len(pairs)} edge(s); link prediction needs at least 2: pass labels= or probe=."
        )
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_held = min(len(pairs) - 1, max(1, round(len(pairs) * fraction)))
    held, kept = pairs[order[:n_held]], pairs[order[n_held:]]
    return np.ascontiguousarray(kept.T), held


@dataclass
class LinkPredictionProbe:
    """``probe(Z, split_seed) -> AUC``: how well cosine similarity of rows ranks held-out edges above random
    node pairs. Needs no class labels (``uses_labels = False``).

    Each split scores a seeded sample of at most ``max_edges`` held-out edges against as many random
    pairs of distinct nodes that are not edges of the graph (``known``), so a call costs
    O(max_edges), whatever the size of the graph.

    Attributes:
        held: (m, 2) held-out edges (row indices), hidden from every candidate that uses the graph.
        num_nodes: rows of the candidate matrices.
        known: (k, 2) every edge of the graph (held out or not), excluded from the negatives.
        max_edges: positives (and negatives) per split.
    """

    held: np.ndarray
    num_nodes: int
    known: np.ndarray | None = None
    max_edges: int = DEFAULT_PROBE_EDGES
    uses_labels: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.held = np.asarray(self.held, dtype=np.int64)
        if self.held.ndim != 2 or self.held.shape[1] != 2 or len(self.held) == 0:
            raise ValueError(f"held must be a non-empty (m, 2) array of edges, got shape {self.held.shape}.")
        if self.held.min() < 0 or self.held.max() >= self.num_nodes:
            raise ValueError(f"held edges index outside the {self.num_nodes} nodes.")
        if self.max_edges < 1:
            raise ValueError(f"max_edges must be >= 1, got {self.max_edges}.")
        known = self.held if self.known is None else np.concatenate([self.known, self.held])
        lo, hi = np.minimum(known[:, 0], known[:, 1]), np.maximum(known[:, 0], known[:, 1])
        self._known = np.unique(lo * self.num_nodes + hi)

    def __call__(self, z: np.ndarray, split_seed: int) -> float:
        """AUC of cosine scores of a sample of held-out edges against random non-edges (split ``split_seed``)."""
        if z.shape[0] != self.num_nodes:
            raise ValueError(f"the probe got {z.shape[0]} rows; the graph has {self.num_nodes} nodes.")
        rng = np.random.default_rng([split_seed, 7])
        take = min(len(self.held), self.max_edges)
        pos = self.held[rng.choice(len(self.held), size=take, replace=False)]
        neg = self._negatives(rng, take)
        unit = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
        score_pos = np.einsum("ij,ij->i", unit[pos[:, 0]], unit[pos[:, 1]])
        score_neg = np.einsum("ij,ij->i", unit[neg[:, 0]], unit[neg[:, 1]])
        return _auc(score_pos, score_neg)

    def _negatives(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """``count`` random pairs of distinct nodes that are not known edges (fewer if the graph is dense)."""
        out: list[np.ndarray] = []
        have = 0
        for _ in range(20):
            pairs = rng.integers(0, self.num_nodes, size=(2 * count, 2))
            lo, hi = np.minimum(pairs[:, 0], pairs[:, 1]), np.maximum(pairs[:, 0], pairs[:, 1])
            ok = (lo != hi) & ~np.isin(lo * self.num_nodes + hi, self._known)
            out.append(pairs[ok])
            have += int(ok.sum())
            if have >= count:
                break
        neg = np.concatenate(out)[:count]
        if len(neg) == 0:
            raise ValueError("the graph is complete: there are no non-edges to score held-out edges against.")
        return neg

    def __repr__(self) -> str:
        return f"LinkPredictionProbe(held={len(self.held)}, num_nodes={self.num_nodes}, max_edges={self.max_edges})"


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mann-Whitney AUC: the probability that a positive outscores a negative (ties count half)."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


class GraphAutoSimSkip:
    """Auto mode on a graph: the core's and the graph's candidates, scored by a label or link-prediction
    probe; the identity is kept unless a candidate beats it beyond the noise (see the module docstring).

    Args:
        hops: SGC propagation depths offered as candidates ``sgc-<k>``.
        spectral_dim: dimension of the ``spectral`` candidate (0: not offered).
        structure: offer the structure-aware refiner ``simskip-structure`` (trains one more refiner).
        held_out: share of edges hidden for the link-prediction probe.
        max_probe_edges: held-out edges scored per split.
        label_metric: the label probe's metric when ``labels=`` are given ("knn" or "logreg").
        n_splits: validation splits per candidate.
        seed: seeds the edge split, the refiners and the probes.
        **simskip_kwargs: arguments of the refiners (:class:`~simskip_core.api.SimSkip`: epochs, loss, ...).

    Attributes (after :meth:`fit`): chosen, selection_ (the report, every candidate with its mean and
    noise), model_ (the core refiner), maps_ (the core's candidate maps, fitted on the fit rows), structure_ (the structure-aware refiner or None), fit_edge_index_
    (the edges the candidates were fitted with), held_out_ (the hidden edges or None).
    """

    def __init__(
        self,
        *,
        hops: Sequence[int] = (1, 2, 3),
        spectral_dim: int = 16,
        structure: bool = True,
        held_out: float = 0.1,
        max_probe_edges: int = DEFAULT_PROBE_EDGES,
        label_metric: str = "logreg",
        n_splits: int = 5,
        seed: int = 0,
        **simskip_kwargs: Any,
    ) -> None:
        if any(k < 1 for k in hops):
            raise ValueError(f"hops must be >= 1, got {list(hops)}.")
        if spectral_dim < 0:
            raise ValueError(f"spectral_dim must be >= 0, got {spectral_dim}.")
        if simskip_kwargs.get("mode", "refine") != "refine":
            raise ValueError("GraphAutoSimSkip is auto mode already; do not pass mode=.")
        self.hops = tuple(int(k) for k in hops)
        self.spectral_dim = int(spectral_dim)
        self.structure = bool(structure)
        self.held_out = float(held_out)
        self.max_probe_edges = int(max_probe_edges)
        self.label_metric = label_metric
        self.n_splits = int(n_splits)
        self.seed = int(seed)
        self.simskip_kwargs = dict(simskip_kwargs)
        self.model_: SimSkip | None = None
        self.maps_: dict[str, Any] = {}
        self.structure_: StructureAwareSimSkip | None = None
        self.selection_: dict[str, Any] | None = None
        self.fit_edge_index_: np.ndarray | None = None
        self.held_out_: np.ndarray | None = None

    @property
    def chosen(self) -> str:
        """The name of the candidate :meth:`transform` applies."""
        if self.selection_ is None:
            raise RuntimeError("this GraphAutoSimSkip is not fitted yet; call fit(x, edge_index) first.")
        return str(self.selection_["chosen"])

    def fit(
        self,
        x: Any,
        edge_index: Any,
        *,
        labels: np.ndarray | None = None,
        probe: Probe | None = None,
        refiner: SimSkip | None = None,
    ) -> GraphAutoSimSkip:
        """Fit every candidate on node features ``x`` (n, d) and ``edge_index`` (2, E), score them, choose.

        ``refiner``: a refine-mode :class:`~simskip_core.api.SimSkip` already fitted on these ``x``
        (label-free, e.g. the benchmark's ``simskip-ntxent`` row) to use instead of training one.
        """
        n = int(np.asarray(x).shape[0]) if not hasattr(x, "shape") else int(x.shape[0])
        feats = check_node_features(x, n)
        ei = check_edge_index(edge_index, n)
        self.held_out_ = None
        if probe is None and labels is not None:
            probe = LabelProbe(np.asarray(labels), metric=self.label_metric, sample_seed=self.seed)
        if probe is None:
            ei, self.held_out_ = split_edges(ei, n, fraction=self.held_out, seed=self.seed)
            known = edge_pairs(edge_index, n)
            probe = LinkPredictionProbe(self.held_out_, n, known=known, max_edges=self.max_probe_edges)
        self.fit_edge_index_ = ei
        if refiner is not None and (
            refiner.mode != "refine" or refiner.uses_labels or refiner.dim_ != feats.shape[1]
        ):
            raise ValueError(
                "refiner= must be a label-free refine-mode SimSkip fitted on these node features; "
                "leave it out to train one."
            )
        kwargs = fit_kwargs_for({**self.simskip_kwargs, "seed": self.seed}, n)
        self.model_ = refiner if refiner is not None else SimSkip(**kwargs).fit(feats)
        maps = self.maps_ = self.model_.candidate_maps(feats)
        vectors = {name: apply_module(module, feats) for name, module in maps.items()}
        if self.structure:
            structure_kwargs = {k: v for k, v in self.simskip_kwargs.items() if k != "batch_size"}
            self.structure_ = StructureAwareSimSkip(hops=2, seed=self.seed, **structure_kwargs)
            self.structure_.fit(feats, ei)
        vectors.update(self._graph_vectors(feats, ei))
        self.selection_ = select_candidate(vectors, probe, n_splits=self.n_splits)
        self.selection_["probe"] = repr(probe)
        self.selection_["rows_scored"] = n
        logger.info("GraphAutoSimSkip: %s", self.selection_["reason"])
        return self

    def _graph_names(self) -> list[str]:
        """Names of the graph's candidates, in the order they are offered."""
        names = ["neighbour-average", *(f"sgc-{k}" for k in self.hops)]
        if self.spectral_dim:
            names.append("spectral")
        if self.structure_ is not None:
            names.append("simskip-structure")
        return names

    def _graph_vectors(
        self, feats: np.ndarray, ei: np.ndarray, names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """The graph's candidates ``names`` (default: all) on (``feats``, ``ei``), each computed once
        (propagation incrementally, hop by hop)."""
        wanted = set(self._graph_names() if names is None else names)
        n = feats.shape[0]
        out: dict[str, np.ndarray] = {}
        if "neighbour-average" in wanted:
            out["neighbour-average"] = neighbour_average(feats, ei, num_nodes=n)
        depth = max((k for k in self.hops if f"sgc-{k}" in wanted), default=0)
        if depth:
            s = normalized_adjacency(ei, n)
            h = feats.astype(np.float64)
            for k in range(1, depth + 1):
                h = s @ h
                if f"sgc-{k}" in wanted:
                    out[f"sgc-{k}"] = h.astype(np.float32)
        if "spectral" in wanted:
            out["spectral"] = spectral_embedding(ei, n, self.spectral_dim, seed=self.seed)
        if "simskip-structure" in wanted and self.structure_ is not None:
            out["simskip-structure"] = self.structure_.transform(feats, ei)
        return out

    def transform(self, x: Any, edge_index: Any) -> np.ndarray:
        """The chosen candidate applied to the graph (``x``, ``edge_index``), over all its edges."""
        chosen = self.chosen
        n = int(np.asarray(x).shape[0]) if not hasattr(x, "shape") else int(x.shape[0])
        feats = check_node_features(x, n)
        ei = check_edge_index(edge_index, n)
        if chosen in self._graph_names():
            return self._graph_vectors(feats, ei, [chosen])[chosen]
        return apply_module(self.maps_[chosen], feats)

    def fit_transform(self, x: Any, edge_index: Any, **fit_kwargs: Any) -> np.ndarray:
        """``fit(x, edge_index, **fit_kwargs).transform(x, edge_index)``."""
        return self.fit(x, edge_index, **fit_kwargs).transform(x, edge_index)

    def scores(self) -> Mapping[str, float]:
        """Mean probe score of every candidate (from :attr:`selection_`)."""
        if self.selection_ is None:
            raise RuntimeError("this GraphAutoSimSkip is not fitted yet; call fit(x, edge_index) first.")
        return {name: row["mean"] for name, row in self.selection_["candidates"].items()}
