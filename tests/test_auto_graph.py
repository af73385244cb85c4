"""Graph auto mode: the graph's candidates, the label probe on graphs whose labels follow or oppose the
edges, and the link-prediction probe on held-out edges (hidden from every structural candidate)."""

from __future__ import annotations

import numpy as np
import pytest
from simskip_graph.auto import GraphAutoSimSkip, LinkPredictionProbe, split_edges
from simskip_graph.ops import edge_pairs

FAST = {"epochs": 3, "progress": False}
STRUCTURAL = {"neighbour-average", "sgc-1", "sgc-2", "sgc-3", "spectral", "simskip-structure"}


def _two_class_graph(
    *, p_same: float, p_other: float, signal: float, n: int = 120, d: int = 16, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features ``class_sign * signal`` on every dimension plus unit noise, and random edges inside a class
    with probability ``p_same`` and across classes with ``p_other``: (x, edge_index, labels)."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    x = (np.where(y == 0, -signal, signal)[:, None] + rng.normal(size=(n, d))).astype(np.float32)
    i, j = np.triu_indices(n, k=1)
    p = np.where(y[i] == y[j], p_same, p_other)
    keep = rng.random(len(i)) < p
    return x, np.stack([i[keep], j[keep]]), y


def test_labels_follow_the_edges_neighbour_averaging_wins() -> None:
    x, ei, y = _two_class_graph(p_same=0.15, p_other=0.01, signal=0.12)
    auto = GraphAutoSimSkip(structure=False, **FAST).fit(x, ei, labels=y)
    scores = auto.scores()
    assert scores["neighbour-average"] > scores["identity"] + 0.1
    assert auto.chosen in STRUCTURAL, auto.selection_["reason"]
    assert auto.transform(x, ei).shape[0] == len(y)


def test_labels_oppose_the_edges_neighbour_averaging_loses_and_is_not_picked() -> None:
    x, ei, y = _two_class_graph(p_same=0.01, p_other=0.15, signal=0.6)
    auto = GraphAutoSimSkip(structure=False, **FAST).fit(x, ei, labels=y)
    scores = auto.scores()
    assert scores["neighbour-average"] < scores["identity"] - 0.1
    assert auto.chosen not in {"neighbour-average", "sgc-1"}, auto.selection_["reason"]


def test_link_probe_without_labels_prefers_structure_and_hides_the_held_out_edges() -> None:
    x, ei, _ = _two_class_graph(p_same=0.2, p_other=0.01, signal=0.0)  # features carry nothing
    auto = GraphAutoSimSkip(**FAST).fit(x, ei)
    assert auto.selection_["probe"].startswith("LinkPredictionProbe")
    scores = auto.scores()
    assert abs(scores["identity"] - 0.5) < 0.1
    assert auto.chosen in STRUCTURAL and scores[auto.chosen] > 0.7, auto.selection_["reason"]
    held = {tuple(e) for e in auto.held_out_.tolist()}
    fitted = {tuple(e) for e in edge_pairs(auto.fit_edge_index_, len(x)).tolist()}
    assert held and not held & fitted
    assert held | fitted == {tuple(e) for e in edge_pairs(ei, len(x)).tolist()}


def test_link_probe_auc_on_known_cases() -> None:
    held = np.array([[0, 1], [2, 3]])
    z = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [-1, 0], [0, -1]], dtype=np.float32)
    probe = LinkPredictionProbe(held, 6, known=held)
    assert probe(z, 0) == 1.0  # linked rows identical, every other pair less similar
    assert probe(np.ones((6, 2), dtype=np.float32), 0) == 0.5  # all ties
    assert probe.uses_labels is False


def test_link_probe_scores_a_bounded_sample() -> None:
    held = np.stack([np.arange(0, 5000, 2), np.arange(1, 5000, 2)], axis=1)
    probe = LinkPredictionProbe(held, 5000, max_edges=100)
    calls = []
    original = probe._negatives

    def spy(rng: np.random.Generator, count: int) -> np.ndarray:
        calls.append(count)
        return original(rng, count)

    probe._negatives = spy  # type: ignore[method-assign]
    probe(np.random.default_rng(0).normal(size=(5000, 4)).astype(np.float32), 0)
    assert calls == [100]


def test_split_edges_and_bad_input() -> None:
    ei = np.array([[0, 1, 2, 3], [1, 2, 3, 0]])
    kept, held = split_edges(ei, 4, fraction=0.25, seed=0)
    assert kept.shape == (2, 3) and held.shape == (1, 2)
    with pytest.raises(ValueError, match="at least 2"):
        split_edges(np.array([[0], [1]]), 2)
    with pytest.raises(ValueError, match="fraction"):
        split_edges(ei, 4, fraction=1.0)
    with pytest.raises(ValueError, match="non-empty"):
        LinkPredictionProbe(np.zeros((0, 2)), 4)
    with pytest.raises(ValueError, match="mode"):
        GraphAutoSimSkip(mode="auto")
