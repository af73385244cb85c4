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
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from simskip_core.tasks import EvalResult, ItemScores

__all__ = [
    "DEFAULT_CS",
    "classification_eval",
    "cosine_pair_scores",
    "knn_correct",
    "probe_correct",
    "similarity_eval",
]

#: Inverse regularisation strengths the probe chooses from by cross-validation on the training split.
DEFAULT_CS: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)


def _check_labels(y: np.ndarray, n: int, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the embeddings, got {y.shape}.")
    if (y < 0).any():
        raise ValueError(f"{name} holds unlabelled items (-1); evaluate on labelled items only.")
    return y


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
    comparison into a comparison of regularisers.
    """
    y_train = _check_labels(y_train, train.shape[0], "y_train")
    y_test = _check_labels(y_test, test.shape[0], "y_test")
    if np.unique(y_train).size < 2:
        raise ValueError("the probe needs at least two classes among the training labels.")
    folds = min(cv, int(np.bincount(y_train).min()) if y_train.size else 0)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if folds >= 2 and len(cs) > 1:
            search = GridSearchCV(
                model,
                {"logisticregression__C": list(cs)},
                cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                n_jobs=1,
            )
            search.fit(train, y_train)
            fitted = search.best_estimator_
        else:
            fitted = model.set_params(logisticregression__C=cs[len(cs) // 2]).fit(train, y_train)
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
