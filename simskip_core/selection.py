"""Auto-selection, the no-harm guard: keep the identity unless a candidate beats it beyond validation noise."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["DEFAULT_PROBE_ROWS", "LabelProbe", "Probe", "probe_rows", "select_candidate", "split_labels"]

#: Labelled rows a :class:`LabelProbe` reads at most by default: a probe call costs O(1) in the rows.
DEFAULT_PROBE_ROWS = 2000


@runtime_checkable
class Probe(Protocol):
    """Scores candidate embeddings (rows aligned with the fit data) on validation split ``split_seed``;
    higher is better.

    Each benchmark task supplies a default through ``Task.default_probe``. ``uses_labels`` says whether
    the probe reads class labels: auto mode guided by such a probe is a label-using mode. A plain
    callable without the attribute still works in :func:`select_candidate` and ``SimSkip(probe=...)``;
    the benchmark reports it, conservatively, as label-using.

    A probe that reads only some rows may say so with a ``rows`` attribute (sorted row indices, see
    :func:`probe_rows`): auto mode then applies each candidate to those rows only and calls the probe
    with them, in that order. A probe whose ``row_normalize`` attribute is true scores L2-normalised
    rows: auto mode's candidates then include that normalisation, so that what ``transform`` returns
    is exactly what was scored.
    """

    @property
    def uses_labels(self) -> bool:
        """Whether the probe reads class labels."""
        ...

    def __call__(self, z: np.ndarray, split_seed: int, /) -> float:
        """The score of embeddings ``z`` on validation split ``split_seed``."""
        ...


@dataclass
class LabelProbe:
    """A probe from class labels of (some of) the fitted rows: train on part of the labelled rows,
    score on the rest, a new stratified split per ``split_seed``.

    Args:
        labels: (n,) integer labels, -1 for unlabelled rows (ignored).
        metric: "knn" (cosine k-NN accuracy, fast) or "logreg" (logistic-regression probe accuracy).
        val_fraction: share of labelled rows scored in each split.
        k: neighbours for "knn".
        max_rows: the probe reads about this many labelled rows (a class-stratified sample drawn
            once, seeded by ``sample_seed``, each class keeping at least 2 rows), so a call costs
            O(max_rows^2) whatever the data size; None reads every labelled row. The rows read are
            :attr:`rows`.
        sample_seed: seed of that sample.
    """

    labels: np.ndarray
    metric: str = "knn"
    val_fraction: float = 0.3
    k: int = 5
    max_rows: int | None = DEFAULT_PROBE_ROWS
    sample_seed: int = 0

    def __post_init__(self) -> None:
        if self.metric not in {"knn", "logreg"}:
            raise ValueError(f"metric must be 'knn' or 'logreg', got {self.metric!r}.")
        if self.max_rows is not None and self.max_rows < 4:
            raise ValueError(f"max_rows must be >= 4 or None, got {self.max_rows!r}.")
        self.labels = np.asarray(self.labels)
        if self.labels.ndim != 1:
            raise ValueError(
                f"labels must be a 1-D array (one label per row), got shape {self.labels.shape}."
            )
        labelled = self.labels >= 0
        if labelled.sum() < 4 or np.unique(self.labels[labelled]).size < 2:
            raise ValueError("LabelProbe needs at least 4 labelled rows from at least 2 classes.")
        self._rows = _stratified_sample(self.labels, self.max_rows, self.sample_seed)

    @property
    def rows(self) -> np.ndarray:
        """Sorted indices of the labelled rows this probe reads (all of them, or the sample)."""
        return self._rows

    @property
    def uses_labels(self) -> bool:
        """True: a label probe reads class labels, so auto mode guided by it is a label-using mode."""
        return True

    def __call__(self, z: np.ndarray, split_seed: int) -> float:
        """Accuracy on split ``split_seed`` of the probe's rows of ``z``.

        ``z`` holds either one row per label (the probe picks :attr:`rows`) or exactly the rows
        :attr:`rows`, in that order (what auto mode passes).
        """
        # scikit-learn's estimators load here, not when ``from simskip_core import SimSkip`` runs
        from sklearn.model_selection import StratifiedShuffleSplit

        from simskip_core.evaluation import knn_correct, probe_correct

        rows = self._rows
        if z.shape[0] == len(self.labels):
            z = z[rows]
        elif z.shape[0] != len(rows):
            raise ValueError(
                f"the probe got {z.shape[0]} rows; pass one row per label ({len(self.labels)}) "
                f"or the probe's {len(rows)} rows (LabelProbe.rows)."
            )
        labels = self.labels[rows]
        idx = np.arange(len(rows))
        y = labels
        counts = np.bincount(y)
        stratify = y if counts[counts > 0].min() >= 2 else None
        if stratify is None:
            rng = np.random.default_rng(split_seed)
            perm = rng.permutation(len(idx))
            n_val = max(1, round(len(idx) * self.val_fraction))
            val, fit = perm[:n_val], perm[n_val:]
        else:
            splitter = StratifiedShuffleSplit(
                n_splits=1, test_size=self.val_fraction, random_state=split_seed
            )
            fit, val = next(splitter.split(idx, stratify))
        a, b = idx[fit], idx[val]
        if self.metric == "knn":
            return float(knn_correct(z[a], labels[a], z[b], labels[b], k=self.k).mean())
        correct, _ = probe_correct(z[a], labels[a], z[b], labels[b], cs=(1.0,), seed=split_seed)
        return float(correct.mean())


def _stratified_sample(labels: np.ndarray, max_rows: int | None, seed: int) -> np.ndarray:
    """Sorted indices of at most ``max_rows`` labelled rows, each class keeping its share (at least 2 rows)."""
    idx = np.flatnonzero(labels >= 0)
    if max_rows is None or len(idx) <= max_rows:
        return idx
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels[idx], return_counts=True)
    keep = []
    for cls, count in zip(classes, counts):
        members = idx[labels[idx] == cls]
        take = min(count, max(2, round(max_rows * count / len(idx))))
        keep.append(rng.choice(members, size=take, replace=False))
    return np.sort(np.concatenate(keep))


def split_labels(labels: np.ndarray, fraction: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split the labelled rows into two disjoint label arrays (-1 elsewhere): ``(train, score)``.

    Fit a label-using candidate on ``train`` only and pass ``labels=score`` to auto mode, so no
    labelled row that trains a candidate scores it. ``fraction`` is the share of each class that goes
    to ``train``; every class keeps at least one row on each side when it has two.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction}.")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train = np.full(labels.shape, -1, dtype=np.int64)
    score = np.full(labels.shape, -1, dtype=np.int64)
    for cls in np.unique(labels[labels >= 0]):
        members = rng.permutation(np.flatnonzero(labels == cls))
        cut = min(max(1, round(len(members) * fraction)), len(members) - 1) if len(members) > 1 else 0
        train[members[:cut]] = cls
        score[members[cut:]] = cls
    return train, score


def probe_rows(probe: object, n: int) -> np.ndarray | None:
    """The row indices a probe reads (its ``rows`` attribute, checked against ``n`` rows), or None: all rows."""
    rows = getattr(probe, "rows", None)
    if rows is None:
        return None
    rows = np.asarray(rows)
    if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
        raise ValueError(f"a probe's rows must be a 1-D integer index array, got {rows.dtype} {rows.shape}.")
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise ValueError(
            f"the probe's rows index outside the {n} rows of the data; build the probe for this data."
        )
    return rows


def select_candidate(
    candidates: Mapping[str, Any],
    probe: Probe | Callable[[Any, int], float],
    *,
    n_splits: int = 5,
    z: float = 2.0,
    reference: str = "identity",
) -> dict[str, Any]:
    """Score every candidate on ``n_splits`` validation splits and pick one, conservatively.

    ``candidates`` maps names to what the probe scores: usually (n, d) matrices, or whole models for
    a probe that scores models (e.g. a KG model whose relations were re-fitted).

    The best candidate by mean score wins only if its mean paired gain over ``reference`` exceeds
    ``z`` times the noise, where noise is the larger of the standard error of the paired differences
    and the standard error of the reference's own scores across splits (the splits overlap, so the
    paired standard error alone understates it). Otherwise the reference is kept.

    Returns a JSON-serialisable report: per candidate its split scores, mean, std, mean gain over the
    reference, the gain's standard error and its ``noise`` (the quantity the rule compares the gain
    with); the best candidate, the choice and the reason.
    """
    if reference not in candidates:
        raise ValueError(
            f"the reference candidate {reference!r} must be among the candidates {sorted(candidates)}."
        )
    if n_splits < 2:
        raise ValueError(f"n_splits must be >= 2 to estimate validation noise, got {n_splits}.")
    scores = {
        name: [float(probe(vectors, split)) for split in range(n_splits)]
        for name, vectors in candidates.items()
    }
    for name, values in scores.items():
        if not np.all(np.isfinite(values)):
            raise ValueError(f"the probe returned a non-finite score for candidate {name!r}: {values}.")
    ref = np.array(scores[reference])
    ref_se = float(ref.std(ddof=1) / np.sqrt(n_splits))
    table: dict[str, dict[str, Any]] = {}
    for name, values in scores.items():
        arr = np.array(values)
        diff = arr - ref
        gain_se = float(diff.std(ddof=1) / np.sqrt(n_splits))
        table[name] = {
            "scores": values,
            "mean": float(arr.mean()),
            "std": float(arr.std(ddof=1)),
            "gain": float(diff.mean()),
            "gain_se": gain_se,
            "noise": max(gain_se, ref_se),
        }
    best = max(table, key=lambda name: (table[name]["mean"], name == reference))
    noise = float(table[best]["noise"])
    gain = float(table[best]["gain"])
    if best != reference and gain > z * noise:
        chosen, reason = best, f"{best} beats {reference} by {gain:.4f} > {z} x noise {noise:.4f}"
    elif best == reference:
        chosen, reason = reference, f"no candidate scored above {reference}"
    else:
        chosen, reason = (
            reference,
            f"best candidate {best} gains {gain:.4f}, within {z} x noise {noise:.4f}: keeping {reference}",
        )
    return {
        "candidates": table,
        "best": best,
        "chosen": chosen,
        "noise": float(noise),
        "z": z,
        "n_splits": n_splits,
        "reason": reason,
    }
