"""SimSkip is a scikit-learn estimator, its defaults work on small data, and odd inputs get clear answers."""

from __future__ import annotations

import dataclasses
import inspect
import logging

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, make_scorer
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import Pipeline

from simskip_core import SimSkip, SkipRefiner
from simskip_core.api import DEFAULT_AUGMENT

FAST = {"epochs": 2, "batch_size": 64, "progress": False}


def test_constructor_stores_every_argument_unchanged() -> None:
    names = [p for p in inspect.signature(SimSkip).parameters]
    custom = {"loss_kwargs": {"temperature": 0.2}, "alphas": [0.5], "candidates": ["whitening"], "depth": 3}
    model = SimSkip(**custom)
    params = model.get_params(deep=True)
    assert sorted(params) == sorted(names)
    for key, value in custom.items():
        assert params[key] is value
    assert params["augment"] is DEFAULT_AUGMENT


def test_clone_and_set_params() -> None:
    model = SimSkip(**FAST, loss="studentt", hidden_dim=32)
    twin = clone(model)
    assert twin is not model and twin.get_params() == model.get_params()
    twin.set_params(epochs=7, mode="auto")
    assert (twin.epochs, twin.mode, model.epochs) == (7, "auto", 2)
    twin.set_params(mode="magic")  # set_params does not check; fit does
    with pytest.raises(ValueError, match="mode must be one of"):
        twin.fit(np.zeros((10, 4), dtype=np.float32))


def test_fit_does_not_change_parameters(blobs) -> None:
    x, _ = blobs
    model = SimSkip(**{**FAST, "batch_size": 10_000})
    before = model.get_params()
    model.fit(x[:100])
    assert model.get_params() == before


def test_pipeline_and_cross_val_score(blobs) -> None:
    x, labels = blobs
    pipe = Pipeline([("simskip", SimSkip(**FAST)), ("clf", LogisticRegression(max_iter=200))])
    scores = cross_val_score(pipe, x, labels, cv=3, scoring=make_scorer(accuracy_score))
    assert scores.shape == (3,) and (scores > 0.9).all()
    refined = SimSkip(**FAST).fit_transform(x, labels)  # y is ignored: label-free
    assert refined.shape == x.shape


def test_train_config_and_architecture_stay_available() -> None:
    model = SimSkip(epochs=4, lr=0.01, hidden_dim=16, progress=False)
    assert model.train_config.epochs == 4 and model.train_config.lr == 0.01
    assert model.architecture["hidden_dim"] == 16 and model.architecture["depth"] == 2
    model.train_config = dataclasses.replace(model.train_config, augment_fit_rows=100, device="cpu")
    assert (model.augment_fit_rows, model.device, model.epochs) == (100, "cpu", 4)
    assert model.get_params()["augment_fit_rows"] == 100


def test_repr_is_short() -> None:
    text = repr(SimSkip(loss="studentt", epochs=3))
    assert text == "SimSkip(loss='studentt', mode='refine', epochs=3, seed=0, ...)"


def test_config_dict_is_what_save_writes(blobs, tmp_path) -> None:
    x, _ = blobs
    model = SimSkip(**FAST).fit(x)
    params = model.config_dict()
    assert params["augment"] == [["featuremask", {"keep_prob": 0.8}], ["gaussiannoise", {"scale": 0.5}]]
    assert "probe" not in params and "device" not in params
    loaded = SimSkip.load(model.save(tmp_path / "m"))
    assert loaded.config_dict() == params


@pytest.mark.parametrize(("rows", "expected"), [(50, 45), (112, 101)])
def test_defaults_work_on_small_data(blobs, caplog, rows, expected) -> None:
    x, _ = blobs
    with caplog.at_level(logging.WARNING, logger="simskip_core.api"):
        model = SimSkip(epochs=2, progress=False).fit(x[:rows])
    note = f"batch_size capped from 256 to {expected}"
    assert model.fit_notes_ and model.fit_notes_[0].startswith(note)
    assert all(record["batch_size"] == expected for record in model.history_)
    assert any(note in record.getMessage() for record in caplog.records)
    assert model.batch_size == 256 and model.transform(x[:rows]).shape == (rows, 16)


def test_one_row_is_not_enough(blobs) -> None:
    x, _ = blobs
    with pytest.raises(ValueError, match="at least 2 training rows"):
        SimSkip(**FAST).fit(x[:1])
    SimSkip(**FAST).fit(x[:2])


def test_hidden_dim_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="hidden_dim must be a positive int or None"):
        SimSkip(hidden_dim=0)
    with pytest.raises(ValueError, match="hidden_dim must be a positive int or None"):
        SkipRefiner(8, hidden_dim=0)
    assert SkipRefiner(8, hidden_dim=np.int64(4)).hidden_dim == 4


def test_pairs_must_be_a_dict_of_integer_pairs(blobs) -> None:
    x, _ = blobs
    edges = np.array([[0, 1], [2, 3]])
    with pytest.raises(TypeError, match=r"pairs must be a dict mapping a signal name to an \(m, 2\)"):
        SimSkip(**FAST).fit(x, pairs=edges)
    with pytest.raises(TypeError, match=r"row 1 is \[2.5, 3.0\]"):
        SimSkip(**FAST).fit(x, pairs={"edges": np.array([[0.0, 1.0], [2.5, 3.0]])})
    as_int = SimSkip(**FAST).fit(x, pairs={"edges": edges}).transform(x)
    as_float = SimSkip(**FAST).fit(x, pairs={"edges": edges.astype(np.float64)}).transform(x)
    assert np.array_equal(as_int, as_float)  # whole-number floats are exact indices


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_tensors_are_accepted(blobs, dtype) -> None:
    x, _ = blobs
    t = torch.from_numpy(x).to(dtype)
    model = SimSkip(**FAST).fit(t)
    out = model.transform(t)
    assert out.dtype == np.float32 and out.shape == x.shape and np.isfinite(out).all()
