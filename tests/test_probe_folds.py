"""The logistic-regression probe: folds fixed per data set (not per seed), warm-started C path."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from simskip_core.evaluation import DEFAULT_CS, probe_correct, probe_folds, tune_probe_c


def _overlapping_blobs(seed: int, n: int = 300, d: int = 24) -> tuple[np.ndarray, ...]:
    """Four overlapping isotropic classes (strong regularisation wins); (x_train, y_train, x_test, y_test)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, d)) * 0.9
    y = np.arange(n + 200) % 4
    x = (centres[y] + rng.normal(size=(len(y), d))).astype(np.float32)
    return x[:n], y[:n], x[n:], y[n:]


def _noisy_linear(seed: int, n: int = 400, d: int = 12) -> tuple[np.ndarray, ...]:
    """Three classes from a noisy linear rule (weak regularisation wins); (x_train, y_train, x_test, y_test)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n + 200, d)).astype(np.float32)
    y = np.argmax(x @ rng.normal(size=(d, 3)) * 3 + rng.normal(size=(n + 200, 3)), axis=1)
    return x[:n], y[:n], x[n:], y[n:]


def _old_probe(x: np.ndarray, y: np.ndarray, test: np.ndarray, seed: int) -> tuple[float, float, np.ndarray]:
    """The probe before the change: GridSearchCV with cold lbfgs fits and folds shuffled by ``seed``.

    Returns the chosen C, the margin of its mean validation accuracy over the runner-up, and the
    test predictions."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    search = GridSearchCV(
        model,
        {"logisticregression__C": list(DEFAULT_CS)},
        cv=StratifiedKFold(3, shuffle=True, random_state=seed),
        n_jobs=1,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(x, y)
    scores = np.sort(search.cv_results_["mean_test_score"])
    return (
        float(search.best_params_["logisticregression__C"]),
        float(scores[-1] - scores[-2]),
        search.predict(test),
    )


@pytest.mark.parametrize(
    ("make", "data_seed"),
    [
        (_overlapping_blobs, 1),
        (_overlapping_blobs, 2),
        (_noisy_linear, 0),
        (_noisy_linear, 3),
        (_noisy_linear, 5),
    ],
)
def test_warm_path_chooses_the_old_c_and_predicts_the_same(make: Any, data_seed: int) -> None:
    """Where the old search (on the same seed-0 folds) was stable, its best C ahead of the runner-up by
    at least one validation item, the warm path picks the same C and, refitting cold with it, gives
    bit-identical predictions (the tolerance is lbfgs's own, tol=1e-4, on the path fits only)."""
    x, y, test, y_test = make(data_seed)
    old_c, margin, old_pred = _old_probe(x, y, test, seed=0)
    assert margin * len(y) >= 0.9, "not a stable case: the old choice was a near tie"
    assert tune_probe_c(x, y) == old_c
    correct, pred = probe_correct(x, y, test, y_test)
    assert np.array_equal(pred, old_pred)
    assert np.array_equal(correct, pred == y_test)


def test_folds_do_not_depend_on_the_method_seed() -> None:
    """Identical inputs get identical folds, choice and predictions whichever seed evaluates them."""
    x, y, test, y_test = _overlapping_blobs(3)
    folds = probe_folds(y)
    assert len(folds) == 3
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, probe_folds(y.copy()), strict=True))
    # the fixed folds are the old code's seed-0 folds; the old code used other folds for seed 5
    old_seed5 = list(StratifiedKFold(3, shuffle=True, random_state=5).split(np.zeros((len(y), 1)), y))
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(folds, old_seed5, strict=True))
    results = [probe_correct(x, y, test, y_test, seed=seed)[1] for seed in (0, 1, 5, 123)]
    assert all(np.array_equal(results[0], other) for other in results[1:])


def test_too_few_items_per_class_uses_the_middle_c_untuned() -> None:
    y = np.array([0, 0, 1, 1, 1, 2])  # class 2 has one item: no 2-fold split
    assert probe_folds(y) == []
    assert tune_probe_c(np.random.default_rng(0).normal(size=(6, 3)), y) == DEFAULT_CS[2]
    assert tune_probe_c(np.zeros((6, 3)), np.array([0, 1] * 3), cs=(5.0,)) == 5.0
