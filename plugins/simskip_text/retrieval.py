"""Retrieval on Debian package descriptions: query = synopsis, corpus = long descriptions, and its metrics.

Relevance: a query (a synopsis, deduplicated) is relevant to the long description(s) of the package(s)
that carry it; long descriptions are deduplicated by text (``-data`` / ``-common`` siblings often share
one), so a document may belong to several packages. Queries with more than
:data:`MAX_RELEVANT` relevant documents ("transitional package", ...) are left out.

Metrics (binary relevance, as sentence-transformers' ``InformationRetrievalEvaluator`` computes them):
nDCG@10, MRR@10 and Recall@100, per query, so the suite's paired bootstrap resamples queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from simskip_core.tasks import EvalResult, ItemScores

__all__ = [
    "MAX_RELEVANT",
    "RETRIEVAL_METRICS",
    "RetrievalSplit",
    "build_retrieval_split",
    "retrieval_eval",
    "retrieval_scores",
]

#: Queries with more relevant documents than this are left out (generic synopses).
MAX_RELEVANT = 3
#: Metric names of the retrieval task, primary first.
RETRIEVAL_METRICS = ("ndcg@10", "mrr@10", "recall@100")
_BLOCK = 1024


@dataclass(frozen=True)
class RetrievalSplit:
    """A retrieval task's texts and relevance, with a fixed split of the queries.

    Attributes:
        corpus: the document texts.
        train_queries / test_queries: query texts (adapter training / evaluation).
        train_relevant / test_relevant: per query, the int64 indices of its relevant documents in ``corpus``.
    """

    corpus: list[str]
    train_queries: list[str]
    train_relevant: list[np.ndarray]
    test_queries: list[str]
    test_relevant: list[np.ndarray]

    def train_pairs(self) -> np.ndarray:
        """(m, 2) int64 rows (train query index, relevant document index), one per relevant document."""
        rows = [(q, int(d)) for q, docs in enumerate(self.train_relevant) for d in docs]
        return np.array(rows, dtype=np.int64).reshape(-1, 2)


def _queries(
    synopses: Sequence[str], descriptions: Sequence[str]
) -> tuple[list[str], list[str], list[list[int]]]:
    doc_index: dict[str, int] = {}
    query_docs: dict[str, set[int]] = {}
    for synopsis, text in zip(synopses, descriptions):
        doc = doc_index.setdefault(text, len(doc_index))
        query_docs.setdefault(synopsis, set()).add(doc)
    queries = [q for q, docs in query_docs.items() if len(docs) <= MAX_RELEVANT]
    return list(doc_index), queries, [sorted(query_docs[q]) for q in queries]


def build_retrieval_split(
    synopses: Sequence[str],
    descriptions: Sequence[str],
    *,
    n_test: int,
    n_train: int,
    n_docs: int | None,
    seed: int,
) -> RetrievalSplit:
    """Seeded split of synopsis queries into ``n_train`` training and ``n_test`` test queries.

    The corpus holds every relevant document of the chosen queries, filled with other documents
    (seeded) up to ``n_docs`` (None: all documents).

    Raises:
        ValueError: fewer usable queries than ``n_train + n_test``, or ``n_docs`` too small for their documents.
    """
    documents, queries, relevant = _queries(synopses, descriptions)
    if len(queries) < n_train + n_test:
        raise ValueError(
            f"only {len(queries)} usable queries, fewer than n_train + n_test = {n_train + n_test}."
        )
    rng = np.random.default_rng([seed, 17])
    order = rng.permutation(len(queries))
    test_ids, train_ids = order[:n_test], order[n_test : n_test + n_train]
    needed = sorted({d for q in np.concatenate([test_ids, train_ids]) for d in relevant[q]})
    if n_docs is None:
        kept = np.arange(len(documents))
    else:
        if n_docs < len(needed):
            raise ValueError(
                f"n_docs={n_docs} cannot hold the {len(needed)} relevant documents of the queries."
            )
        others = np.setdiff1d(np.arange(len(documents)), needed)
        fill = rng.choice(others, size=min(n_docs - len(needed), len(others)), replace=False)
        kept = np.sort(np.concatenate([np.asarray(needed, dtype=np.int64), fill]))
    position = {int(d): i for i, d in enumerate(kept)}

    def remap(ids: np.ndarray) -> list[np.ndarray]:
        return [np.array([position[d] for d in relevant[q]], dtype=np.int64) for q in ids]

    return RetrievalSplit(
        corpus=[documents[d] for d in kept],
        train_queries=[queries[q] for q in train_ids],
        train_relevant=remap(train_ids),
        test_queries=[queries[q] for q in test_ids],
        test_relevant=remap(test_ids),
    )


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def retrieval_scores(
    queries: np.ndarray, docs: np.ndarray, relevant: Sequence[np.ndarray]
) -> dict[str, np.ndarray]:
    """Per-query nDCG@10, MRR@10 and Recall@100 of cosine-similarity ranking (binary relevance).

    Ties are broken by document index (lower first). Returns ``{metric: (n_queries,) float64}``.
    """
    q, d = _unit(queries), _unit(docs)
    if len(relevant) != len(q):
        raise ValueError(f"relevant has {len(relevant)} entries for {len(q)} queries; give one per query.")
    depth = min(100, d.shape[0])
    top = np.empty((len(q), depth), dtype=np.int64)
    for start in range(0, len(q), _BLOCK):
        sims = q[start : start + _BLOCK] @ d.T
        part = np.argpartition(-sims, depth - 1, axis=1)[:, :depth]
        part_sims = np.take_along_axis(sims, part, axis=1)
        order = np.lexsort((part, -part_sims), axis=1)
        top[start : start + _BLOCK] = np.take_along_axis(part, order, axis=1)
    hits = np.zeros(top.shape, dtype=bool)
    sizes = np.array([len(r) for r in relevant], dtype=np.float64)
    for i, rel in enumerate(relevant):
        hits[i] = np.isin(top[i], rel)
    k10 = min(10, depth)
    discounts = 1.0 / np.log2(np.arange(2, k10 + 2))
    dcg = (hits[:, :k10] * discounts).sum(axis=1)
    ideal = np.array([discounts[: int(min(s, k10))].sum() for s in sizes])
    first = np.where(hits[:, :k10].any(axis=1), hits[:, :k10].argmax(axis=1) + 1, np.inf)
    return {
        "ndcg@10": np.where(ideal > 0, dcg / np.maximum(ideal, 1e-12), 0.0),
        "mrr@10": 1.0 / first,
        "recall@100": hits.sum(axis=1) / np.maximum(sizes, 1.0),
    }


def retrieval_eval(queries: np.ndarray, docs: np.ndarray, relevant: Sequence[np.ndarray]) -> EvalResult:
    """:func:`retrieval_scores` as an ``EvalResult``: mean metrics plus per-query ``ItemScores(kind="mean")``."""
    per_query = retrieval_scores(queries, docs, relevant)
    return EvalResult(
        metrics={name: float(values.mean()) for name, values in per_query.items()},
        items={name: ItemScores("mean", values) for name, values in per_query.items()},
    )
