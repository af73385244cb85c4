"""The Debian retrieval task: parsing, the split, the metrics against hand-computed values and
sentence-transformers' InformationRetrievalEvaluator, and the task's registration."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import math

import numpy as np
import pytest
from simskip_text import tasks as text_tasks
from simskip_text.data import load_debian_packages, parse_sections, parse_translation
from simskip_text.retrieval import build_retrieval_split, retrieval_eval, retrieval_scores

from simskip_core.errors import MissingDataError
from simskip_core.tasks import ItemScores, TaskData

TRANSLATION = """Package: alpha
Description-md5: 0
Description-en: first tool
 Alpha does one thing.
 .
 It does it well.

Package: alpha-data
Description-md5: 1
Description-en: data for the first tool
 Alpha does one thing.
 .
 It does it well.

Package: beta
Description-md5: 2
Description-en: second tool
 Beta does another.
"""


def test_parse_translation_reads_synopsis_and_long_description():
    parsed = parse_translation(TRANSLATION)
    assert parsed["alpha"] == ("first tool", "Alpha does one thing.\nIt does it well.")
    assert parsed["beta"] == ("second tool", "Beta does another.")
    assert parse_sections("Package: a\nSection: contrib/games\n\nPackage: b\nSection: libs\n") == {
        "a": "games",
        "b": "libs",
    }


def test_split_deduplicates_documents_and_keeps_relevant_ones():
    synopses = ["q0", "q1", "q1", "q2", "q3", "q4"]
    descriptions = ["d0", "d1", "d1b", "d0", "d3", "d4"]  # q0 and q2 share d0; q1 has two documents
    split = build_retrieval_split(synopses, descriptions, n_test=2, n_train=2, n_docs=5, seed=0)
    assert len(split.corpus) == 5 and len(set(split.corpus)) == 5
    for queries, relevant in (
        (split.train_queries, split.train_relevant),
        (split.test_queries, split.test_relevant),
    ):
        for query, docs in zip(queries, relevant):
            expected = {d for s, d in zip(synopses, descriptions) if s == query}
            assert {split.corpus[i] for i in docs} == expected
    assert split.train_pairs().shape[1] == 2
    again = build_retrieval_split(synopses, descriptions, n_test=2, n_train=2, n_docs=5, seed=0)
    assert again.test_queries == split.test_queries  # a fixed, seeded split
    with pytest.raises(ValueError, match="usable queries"):
        build_retrieval_split(synopses, descriptions, n_test=4, n_train=4, n_docs=None, seed=0)


def _tiny():
    """3 queries, 4 documents; similarities chosen so the rankings are known."""
    docs = np.eye(4, dtype=np.float32)
    queries = np.array(
        [
            [0.9, 0.5, 0.1, 0.0],  # ranking 0, 1, 2, 3
            [0.1, 0.2, 0.9, 0.5],  # ranking 2, 3, 1, 0
            [0.0, 0.0, 0.1, 0.9],
        ],  # ranking 3, 2, 0, 1 (0 and 1 tie: lower index first)
        dtype=np.float32,
    )
    relevant = [np.array([1]), np.array([3, 0]), np.array([1])]
    return queries, docs, relevant


def test_metrics_match_hand_computed_values():
    scores = retrieval_scores(*_tiny())
    ndcg = [
        (1 / math.log2(3)) / 1.0,  # relevant at rank 2
        (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3)),  # ranks 2 and 4 of 2 relevant
        (1 / math.log2(5)) / 1.0,  # rank 4
    ]
    assert np.allclose(scores["ndcg@10"], ndcg)
    assert np.allclose(scores["mrr@10"], [1 / 2, 1 / 2, 1 / 4])
    assert np.allclose(scores["recall@100"], [1, 1, 1])
    result = retrieval_eval(*_tiny())
    assert result.metrics["ndcg@10"] == pytest.approx(np.mean(ndcg))
    assert isinstance(result.items["ndcg@10"], ItemScores) and result.items["ndcg@10"].kind == "mean"


class _LookupModel:
    """Stands in for a model: encodes "q<i>" / "d<j>" as the given vectors (the evaluator only calls these)."""

    def __init__(self, queries: np.ndarray, docs: np.ndarray) -> None:
        self.vectors = {
            **{f"q{i}": v for i, v in enumerate(queries)},
            **{f"d{j}": v for j, v in enumerate(docs)},
        }

    def encode_query(self, texts, **kwargs):
        import torch

        return torch.as_tensor(np.stack([self.vectors[t] for t in texts]))

    encode_document = encode_query


def test_metrics_agree_with_information_retrieval_evaluator():
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    from sentence_transformers.util import cos_sim

    rng = np.random.default_rng(0)
    queries, docs = rng.normal(size=(30, 8)).astype(np.float32), rng.normal(size=(150, 8)).astype(np.float32)
    relevant = [rng.choice(150, size=int(rng.integers(1, 4)), replace=False) for _ in range(30)]
    ours = retrieval_eval(queries, docs, relevant).metrics
    evaluator = InformationRetrievalEvaluator(
        queries={str(i): f"q{i}" for i in range(30)},
        corpus={str(j): f"d{j}" for j in range(150)},
        relevant_docs={str(i): {str(j) for j in rel} for i, rel in enumerate(relevant)},
        mrr_at_k=[10],
        ndcg_at_k=[10],
        accuracy_at_k=[1],
        precision_recall_at_k=[100],
        map_at_k=[10],
        show_progress_bar=False,
        score_functions={"cosine": cos_sim},
    )
    theirs = evaluator.compute_all_metrics(_LookupModel(queries, docs))["cosine"]
    assert ours["ndcg@10"] == pytest.approx(theirs["ndcg@k"][10], abs=1e-6)
    assert ours["mrr@10"] == pytest.approx(theirs["mrr@k"][10], abs=1e-6)
    assert ours["recall@100"] == pytest.approx(theirs["recall@k"][100], abs=1e-6)


def test_missing_index_is_missing_data_with_the_fix(tmp_path):
    with pytest.raises(MissingDataError, match=r"fetch-debian-descriptions\.sh"):
        load_debian_packages(tmp_path)


def _task(name):
    return next(task for task in text_tasks.text_tasks() if task.name == name)


def test_retrieval_task_is_registered_in_the_quick_suite_and_evaluates_its_test_rows():
    from simskip_core.embeddings import EmbeddingSet

    task = _task("text/debian_retrieval")
    assert task.quick and task.primary_metric == "ndcg@10" and task.evaluate is not None
    queries, docs, relevant = _tiny()
    train = EmbeddingSet(np.concatenate([queries[:1], docs]))
    data = TaskData(
        train=train,
        test=EmbeddingSet(np.concatenate([queries, docs])),
        context={
            "n_test_queries": 3,
            "test_relevant": relevant,
            "n_train_queries": 1,
            "train_relevant": [np.array([2])],
        },
    )
    result = task.evaluate(data, train.vectors, data.test.vectors, 0, {})
    assert result.metrics == retrieval_eval(queries, docs, relevant).metrics
    assert task.pair_signals is not None and task.pair_signals(data)["qrels"].tolist() == [[0, 3]]
    assert _task("text/debian_sections").quick
