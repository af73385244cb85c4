"""The query-side adapter: its loss, its training, and the Router model's query / document routes."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from simskip_text.adapter import (
    attach_query_adapter,
    fit_linear_adapter,
    fit_query_adapter,
    mine_negatives,
    query_adapter_loss,
)

QUERIES = ["a strategy game", "a font family", "an xml parser library", "a text editor"]
DOCS = [
    "real-time strategy game of war",
    "a typeface collection",
    "parse xml documents",
    "an editor",
    "other",
]


def _reference_loss(q, pos, neg, ids, temperature):
    total = 0.0
    for i in range(len(q)):
        logits = []
        for j in range(len(q)):
            if j == i or ids[j] != ids[i]:
                logits.append(float(q[i] @ pos[j]) / temperature)
        own = float(q[i] @ pos[i]) / temperature
        logits += [float(q[i] @ n) / temperature for n in neg[i]]
        total += -(own - math.log(sum(math.exp(v) for v in logits)))
    return total / len(q)


def test_loss_matches_a_hand_written_reference():
    torch.manual_seed(0)
    q, pos = F.normalize(torch.randn(5, 8), dim=-1), F.normalize(torch.randn(5, 8), dim=-1)
    pos[3] = pos[1]  # queries 1 and 3 share their relevant document: neither is the other's negative
    neg = F.normalize(torch.randn(5, 3, 8), dim=-1)
    ids = torch.tensor([0, 1, 2, 1, 4])
    got = query_adapter_loss(q, pos, neg, ids, temperature=0.1).item()
    assert got == pytest.approx(_reference_loss(q, pos, neg, ids.tolist(), 0.1), rel=1e-5)


def test_mined_negatives_exclude_relevant_documents():
    rng = np.random.default_rng(0)
    q, d = rng.normal(size=(6, 4)), rng.normal(size=(20, 4))
    relevant = [np.array([i, i + 6]) for i in range(6)]
    mined = mine_negatives(q, d, relevant, count=5)
    assert mined.shape == (6, 5)
    assert not any(np.isin(mined[i], relevant[i]).any() for i in range(6))
    best = [int(np.argsort(-(q[i] @ d.T))[0]) for i in range(6)]
    assert all(best[i] in mined[i] or best[i] in relevant[i] for i in range(6))


def _toy(seed=0):
    rng = np.random.default_rng(seed)
    docs = F.normalize(torch.as_tensor(rng.normal(size=(40, 16)), dtype=torch.float32), dim=-1).numpy()
    mix = np.linalg.qr(rng.normal(size=(16, 16)))[0].astype(np.float32)  # queries live in a rotated space
    queries = docs[:30] @ mix + 0.05 * rng.normal(size=(30, 16)).astype(np.float32)
    return queries, docs, [np.array([i]) for i in range(30)]


def _top1(q, d, relevant):
    return float(np.mean([int(np.argmax(d @ v)) in r for v, r in zip(q, relevant)]))


def test_query_adapter_learns_a_query_map_the_raw_embeddings_miss():
    queries, docs, relevant = _toy()
    adapter = fit_query_adapter(queries, docs, relevant, epochs=60, batch_size=10, negatives=4, lr=1e-2)
    with torch.no_grad():
        adapted = adapter(torch.as_tensor(queries)).numpy()
    assert _top1(adapted, docs, relevant) > _top1(queries, docs, relevant) + 0.3
    linear = fit_linear_adapter(queries, docs, relevant, epochs=60, batch_size=10, lr=1e-2)
    assert torch.allclose(linear.weight.diagonal().mean(), torch.tensor(1.0), atol=0.5)


@pytest.mark.slow
def test_encode_query_is_adapted_and_encode_document_is_not_before_and_after_reload(tmp_path):
    from sentence_transformers import SentenceTransformer
    from simskip_text import tasks as text_tasks

    model = text_tasks._shipped_model()
    q, d = model.encode(QUERIES), model.encode(DOCS)
    adapter = fit_query_adapter(q, d, [np.array([i]) for i in range(4)], epochs=30, batch_size=4, negatives=1)
    for linear in (False, True):
        chosen = (
            fit_linear_adapter(q, d, [np.array([i]) for i in range(4)], epochs=30, batch_size=4)
            if linear
            else adapter
        )
        adapted = attach_query_adapter(model, chosen)
        with torch.no_grad():
            expected = F.normalize(chosen(torch.as_tensor(q)), dim=-1).numpy()
        folder = tmp_path / f"adapted-{linear}"
        adapted.save(str(folder))
        reloaded = SentenceTransformer(str(folder), trust_remote_code=False)
        for candidate in (adapted, reloaded):
            assert np.abs(candidate.encode_query(QUERIES) - expected).max() < 1e-5
            assert np.abs(candidate.encode_query(QUERIES) - q).max() > 1e-3
            assert np.abs(candidate.encode_document(DOCS) - d).max() < 1e-6
            assert np.abs(candidate.encode(DOCS) - d).max() < 1e-6  # no task: the document route
        assert len(list(folder.glob("*Transformer"))) == 1  # the shared transformer is saved once
