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
    fit_info,
    fit_linear_adapter,
    fit_query_adapter,
    mine_negatives,
    query_adapter_loss,
    split_queries,
)
from simskip_text.retrieval import retrieval_scores

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
    kwargs = {"epochs": 60, "batch_size": 10, "lr": 1e-2, "validation": 0}  # capacity: no early stop
    adapter = fit_query_adapter(queries, docs, relevant, negatives=4, **kwargs)
    with torch.no_grad():
        adapted = adapter(torch.as_tensor(queries)).numpy()
    assert _top1(adapted, docs, relevant) > _top1(queries, docs, relevant) + 0.3
    assert fit_info(adapter).val_ndcg == () and fit_info(adapter).best_epoch == 60
    with pytest.raises(ValueError, match="no fit record"):
        fit_info(torch.nn.Linear(2, 2))
    linear = fit_linear_adapter(queries, docs, relevant, **kwargs)
    assert torch.allclose(linear.weight.diagonal().mean(), torch.tensor(1.0), atol=0.5)


def test_split_queries_is_seeded_disjoint_and_refuses_too_few():
    train, val = split_queries(50, 0.2, 3)
    assert len(val) == 10 and len(train) == 40 and not np.intersect1d(train, val).size
    assert np.array_equal(np.union1d(train, val), np.arange(50))
    assert np.array_equal(split_queries(50, 0.2, 3)[1], val) and not np.array_equal(
        split_queries(50, 0.2, 4)[1], val
    )
    assert len(split_queries(5, 0.0, 0)[1]) == 0
    with pytest.raises(ValueError, match="leaves 0 validation"):
        split_queries(2, 0.2, 0)
    with pytest.raises(ValueError, match=r"fraction in \[0, 1\)"):
        split_queries(10, 1.0, 0)


def _identity_is_best(seed=0):
    """Queries equal to their documents; the validation queries are labelled truly, the training ones at
    random, so every training step can only hurt the validation ranking."""
    rng = np.random.default_rng(seed)
    docs = F.normalize(torch.as_tensor(rng.normal(size=(60, 16)), dtype=torch.float32), dim=-1).numpy()
    _, val = split_queries(60, 0.2, seed)
    relevant = [np.array([i]) if i in val else np.array([int(rng.integers(60))]) for i in range(60)]
    return docs.copy(), docs, relevant


@pytest.mark.parametrize("fit", [fit_query_adapter, fit_linear_adapter])
def test_early_stopping_keeps_the_identity_when_training_only_hurts_validation(fit):
    queries, docs, relevant = _identity_is_best()
    adapter = fit(queries, docs, relevant, epochs=40, batch_size=8, lr=1e-2, patience=3)
    info = adapter.fit_info_
    assert info.val_ndcg[0] == pytest.approx(1.0) and info.best_epoch == 0 and info.epochs_run == 3
    assert (info.n_train_queries, info.n_val_queries) == (48, 12)
    with torch.no_grad():
        out = F.normalize(adapter(torch.as_tensor(queries)), dim=-1).numpy()
    assert np.abs(out - queries).max() < 1e-6  # the restored weights are the untrained ones


def test_early_stopping_restores_the_best_validation_epoch():
    queries, docs, relevant = _toy()
    adapter = fit_query_adapter(queries, docs, relevant, epochs=30, batch_size=10, negatives=4, lr=1e-2)
    info = adapter.fit_info_
    assert info.best_epoch > 0 and info.val_ndcg[info.best_epoch] == max(info.val_ndcg)
    _, val = split_queries(len(queries), 0.2, 0)
    with torch.no_grad():
        adapted = adapter(
            F.normalize(torch.as_tensor(queries[val]), dim=-1)
        ).numpy()  # trained on unit queries
    got = retrieval_scores(adapted, docs, [relevant[i] for i in val])["ndcg@10"].mean()
    assert got == pytest.approx(info.val_ndcg[info.best_epoch])


@pytest.mark.slow
def test_encode_query_is_adapted_and_encode_document_is_not_before_and_after_reload(tmp_path):
    from sentence_transformers import SentenceTransformer
    from simskip_text import tasks as text_tasks

    model = text_tasks._shipped_model()
    q, d = model.encode(QUERIES), model.encode(DOCS)
    adapter = fit_query_adapter(
        q, d, [np.array([i]) for i in range(4)], epochs=30, batch_size=4, negatives=1, lr=1e-3, validation=0
    )
    for linear in (False, True):
        chosen = (
            fit_linear_adapter(q, d, [np.array([i]) for i in range(4)], epochs=30, batch_size=4, validation=0)
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


@pytest.mark.parametrize("fit", [fit_query_adapter, fit_linear_adapter])
def test_one_relevance_list_per_query_is_required(fit):
    queries, docs, relevant = _toy()
    with pytest.raises(ValueError, match="30 queries but 29 relevance lists"):
        fit(queries, docs, relevant[:-1])
