"""Downstream metrics every domain shares: a CV-tuned logistic-regression probe, k-NN accuracy, Spearman.

Plugins build their evaluators from these, so a probe means the same thing in every domain.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from simskip_core.tasks import EvalResult, ItemScores

__all__ = [
    "DEFAULT_CS",
    "FOLD_SEED",
    "classification_eval",
    "cosine_pair_scores",
    "knn_correct",
    "probe_correct",
    "probe_folds",
    "similarity_eval",
    "tune_probe_c",
]

#: Inverse regularisation strengths the probe chooses from by cross-validation on the training split.
DEFAULT_CS: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)
#: Shuffling seed of the probe's cross-validation folds: fixed, so the folds depend on the data only.
FOLD_SEED = 0


def _check_labels(y: np.ndarray, n: int, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the embeddings, got {y.shape}.")
    if (y < 0).any():
        raise ValueError(f"{name} holds unlabelled items (-1); evaluate on labelled items only.")
    return y


def probe_folds(y: np.ndarray, cv: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    """The probe's stratified cross-validation folds of labels ``y``: (train rows, validation rows) pairs.

    They depend on ``y`` only (shuffled with the fixed :data:`FOLD_SEED`), never on a method's seed, so
    every representation and every seed of a task is tuned on the same folds. ``cv`` is capped by the
    smallest class; fewer than 2 folds gives an empty list (no tuning possible).
    """
    y = np.asarray(y)
    folds = min(cv, int(np.bincount(y).min()) if y.size else 0)
    if folds < 2:
        return []
    splitter = StratifiedKFold(folds, shuffle=True, random_state=FOLD_SEED)
    return list(splitter.split(np.zeros((y.size, 1)), y))


def tune_probe_c(
    train: np.ndarray,
    y_train: np.ndarray,
    *,
    cs: Sequence[float] = DEFAULT_CS,
    cv: int = 3,
    max_iter: int = 1000,
) -> float:
    """The C of :func:`probe_correct`'s probe: best mean validation accuracy over :func:`probe_folds`.

    Each fold walks the regularisation path from strong to weak (ascending C), every lbfgs fit
    warm-started from the previous C's solution; ties go to the C listed first in ``cs`` (as
    scikit-learn's ``GridSearchCV`` breaks them). With one C, or too few items per class for two
    folds, the middle C of ``cs`` is returned untuned.
    """
    folds = probe_folds(y_train, cv)
    if not folds or len(cs) < 2:
        return float(cs[len(cs) // 2])
    order = sorted(range(len(cs)), key=lambda i: cs[i])
    scores = np.zeros((len(folds), len(cs)))
    for f, (fit_rows, val_rows) in enumerate(folds):
        scaler = StandardScaler().fit(train[fit_rows])
        x_fit, x_val = scaler.transform(train[fit_rows]), scaler.transform(train[val_rows])
        model = LogisticRegression(max_iter=max_iter, warm_start=True)
        for i in order:
            model.set_params(C=cs[i]).fit(x_fit, y_train[fit_rows])
            scores[f, i] = model.score(x_val, y_train[val_rows])
    return float(cs[int(np.argmax(scores.mean(axis=0)))])


def probe_correct(
    train: np.ndarray,
    y_train: np.ndarray,
    test: np.ndarray,
    y_test: np.ndarray,
    *,
    cs: Sequence[float] = DEFAULT_CS,
    cv: int = 3,
    seed: int = 0,
    max_iter: int = 1000,
) -> tuple[np.ndarray, np.ndarray]:
    """Fit a logistic-regression probe (features standardised, C tuned by stratified CV on ``train``).

    Returns the per-test-item correctness (bool, shape (n_test,)) and the predictions.
    Standardising and tuning C per representation keeps whitening's ~20x rescaling from turning the
    comparison into a comparison of regularisers. C is chosen by :func:`tune_probe_c` on the fixed
    folds of :func:`probe_folds`; the probe is then refitted on all of ``train`` with that C.

    ``seed`` is accepted for compatibility and does not change the result: the folds are fixed per
    data set, so identical inputs get the same folds whichever method seed evaluates them.
    """
    del seed  # the folds depend on the labels only (FOLD_SEED)
    y_train = _check_labels(y_train, train.shape[0], "y_train")
    y_test = _check_labels(y_test, test.shape[0], "y_test")
    if np.unique(y_train).size < 2:
        raise ValueError("the probe needs at least two classes among the training labels.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        c = tune_probe_c(train, y_train, cs=cs, cv=cv, max_iter=max_iter)
        fitted = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
        fitted.fit(train, y_train)
    pred = fitted.predict(test)
    return pred == y_test, pred


def knn_correct(
    train: np.ndarray, y_train: np.ndarray, test: np.ndarray, y_test: np.ndarray, *, k: int = 5
) -> np.ndarray:
    """Per-test-item correctness of a cosine k-NN classifier fitted on ``train``."""
    y_train = _check_labels(y_train, train.shape[0], "y_train")
    y_test = _check_labels(y_test, test.shape[0], "y_test")
    k = min(k, train.shape[0])
    knn = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute")
    knn.fit(train, y_train)
    return knn.predict(test) == y_test


def classification_eval(
    train: np.ndarray,
    y_train: np.ndarray,
    test: np.ndarray,
    y_test: np.ndarray,
    *,
    k: int = 5,
    seed: int = 0,
) -> EvalResult:
    """Probe accuracy, probe macro-F1 and k-NN accuracy, with per-item scores for bootstrap tests."""
    correct, pred = probe_correct(train, y_train, test, y_test, seed=seed)
    knn = knn_correct(train, y_train, test, y_test, k=k)
    return EvalResult(
        metrics={
            "probe_acc": float(correct.mean()),
            "probe_macro_f1": float(f1_score(y_test, pred, average="macro")),
            f"knn{k}_acc": float(knn.mean()),
        },
        items={
            "probe_acc": ItemScores("mean", correct.astype(np.float64)),
            f"knn{k}_acc": ItemScores("mean", knn.astype(np.float64)),
        },
    )


def cosine_pair_scores(vectors: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Cosine similarity of each (i, j) row pair of ``vectors``; ``pairs`` is (m, 2)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.clip(norms, 1e-12, None)
    return np.einsum("ij,ij->i", unit[pairs[:, 0]], unit[pairs[:, 1]])


def similarity_eval(
    vectors: np.ndarray, pairs: np.ndarray, gold: np.ndarray, *, name: str = "spearman"
) -> EvalResult:
    """Spearman correlation between cosine similarities of ``pairs`` and gold scores."""
    pred = cosine_pair_scores(vectors, pairs)
    scores = ItemScores("spearman", np.stack([pred, np.asarray(gold, dtype=np.float64)], axis=1))
    return EvalResult(metrics={name: scores.statistic()}, items={name: scores})
