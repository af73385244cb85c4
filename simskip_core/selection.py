"""Auto-selection, the no-harm guard: keep the identity unless a candidate beats it beyond validation noise."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["LabelProbe", "Probe", "select_candidate"]


@runtime_checkable
class Probe(Protocol):
    """Scores candidate embeddings (rows aligned with the fit data) on validation split ``split_seed``;
    higher is better.

    Each benchmark task supplies a default through ``Task.default_probe``. ``uses_labels`` says whether
    the probe reads class labels: auto mode guided by such a probe is a label-using mode. A plain
    callable without the attribute still works in :func:`select_candidate` and ``SimSkip(probe=...)``;
    the benchmark reports it, conservatively, as label-using.
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
    """

    labels: np.ndarray
    metric: str = "knn"
    val_fraction: float = 0.3
    k: int = 5

    def __post_init__(self) -> None:
        if self.metric not in {"knn", "logreg"}:
            raise ValueError(f"metric must be 'knn' or 'logreg', got {self.metric!r}.")
        self.labels = np.asarray(self.labels)
        labelled = self.labels >= 0
        if labelled.sum() < 4 or np.unique(self.labels[labelled]).size < 2:
            raise ValueError("LabelProbe needs at least 4 labelled rows from at least 2 classes.")

    @property
    def uses_labels(self) -> bool:
        """True: a label probe reads class labels, so auto mode guided by it is a label-using mode."""
        return True

    def __call__(self, z: np.ndarray, split_seed: int) -> float:
        """Accuracy on split ``split_seed`` of the labelled rows of ``z``."""
        # scikit-learn's estimators load here, not when ``from simskip_core import SimSkip`` runs
        from sklearn.model_selection import StratifiedShuffleSplit

        from simskip_core.evaluation import knn_correct, probe_correct

        idx = np.flatnonzero(self.labels >= 0)
        y = self.labels[idx]
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
            return float(knn_correct(z[a], self.labels[a], z[b], self.labels[b], k=self.k).mean())
        correct, _ = probe_correct(z[a], self.labels[a], z[b], self.labels[b], cs=(1.0,), seed=split_seed)
        return float(correct.mean())


def select_candidate(
    candidates: Mapping[str, np.ndarray],
    probe: Probe | Callable[[np.ndarray, int], float],
    *,
    n_splits: int = 5,
    z: float = 2.0,
    reference: str = "identity",
) -> dict[str, Any]:
    """Score every candidate on ``n_splits`` validation splits and pick one, conservatively.

    The best candidate by mean score wins only if its mean paired gain over ``reference`` exceeds
    ``z`` times the noise, where noise is the larger of the standard error of the paired differences
    and the standard error of the reference's own scores across splits (the splits overlap, so the
    paired standard error alone understates it). Otherwise the reference is kept.

    Returns a JSON-serialisable report: per-candidate split scores, means, stds, gains, the noise,
    the choice and the reason.
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
    table = {}
    for name, values in scores.items():
        arr = np.array(values)
        diff = arr - ref
        table[name] = {
            "scores": values,
            "mean": float(arr.mean()),
            "std": float(arr.std(ddof=1)),
            "gain": float(diff.mean()),
            "gain_se": float(diff.std(ddof=1) / np.sqrt(n_splits)),
        }
    best = max(table, key=lambda name: (table[name]["mean"], name == reference))
    noise = max(table[best]["gain_se"], table[reference]["std"] / np.sqrt(n_splits))
    gain = table[best]["gain"]
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
