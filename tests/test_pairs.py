"""Positive-pair signals: mutual k-NN against a brute-force reference, graph and label masks, partner sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simskip_core.pairs import GraphSignal, LabelSignal, build_signals, mutual_knn_pairs


def _reference_mutual_knn(x: np.ndarray, k: int) -> set[tuple[int, int]]:
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    nn = [set(np.argsort(-sims[i])[:k].tolist()) for i in range(len(x))]
    return {(i, j) for i in range(len(x)) for j in nn[i] if i < j and i in nn[j]}


def test_mutual_knn_matches_reference() -> None:
    x = np.random.default_rng(0).normal(size=(80, 6)).astype(np.float32)
    pairs = mutual_knn_pairs(x, 4, chunk=17)
    assert {tuple(p) for p in pairs.tolist()} == _reference_mutual_knn(x, 4)


def test_graph_signal_mask_is_symmetric_without_self_loops() -> None:
    signal = GraphSignal("edges", np.array([[0, 1], [1, 2], [3, 3]]), n=5)
    mask = signal.batch_mask(torch.tensor([2, 1, 0, 3]))
    expected = torch.tensor([[0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(mask, expected)
    assert signal.num_pairs == 2


def test_partners_are_real_neighbours() -> None:
    edges = np.array([[0, 1], [0, 2], [3, 4]])
    signal = GraphSignal("edges", edges, n=6)
    partners = signal.sample_partners(torch.tensor([0, 0, 0, 3, 5]), torch.Generator().manual_seed(0))
    assert set(partners[:3].tolist()) <= {1, 2}
    assert partners[3].item() == 4 and partners[4].item() == -1


def test_label_signal_ignores_unlabelled() -> None:
    labels = np.array([0, 1, 0, -1, -1, 1])
    signal = LabelSignal(labels)
    mask = signal.batch_mask(torch.arange(6))
    assert mask[0, 2] and mask[1, 5] and not mask[3, 4] and not mask[0, 1]
    partners = signal.sample_partners(torch.tensor([0, 3, 5]), torch.Generator().manual_seed(0))
    assert partners.tolist() == [2, -1, 1]


def test_build_signals_validates() -> None:
    x = np.zeros((4, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="outside"):
        build_signals(4, x=x, pairs={"edges": np.array([[0, 9]])})
    with pytest.raises(ValueError, match="reserved"):
        build_signals(4, x=x, pairs={"labels": np.array([[0, 1]])})
    with pytest.raises(ValueError, match="shape"):
        build_signals(4, x=x, labels=np.array([0, 1]))
    signals = build_signals(4, x=x, labels=np.array([0, 0, 1, -1]))
    assert [s.uses_labels for s in signals] == [True]
