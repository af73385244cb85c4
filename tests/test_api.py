"""The SimSkip facade: fit/transform, reproducibility, persistence, bad input, checkpoints, auto mode."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import simskip_core.serialization as serialization
from simskip_core import SimSkip
from simskip_core.errors import CorruptModelError

FAST = {"epochs": 3, "batch_size": 64, "progress": False}


def test_fit_transform_changes_embeddings_and_keeps_shape(blobs) -> None:
    x, _ = blobs
    model = SimSkip(**FAST).fit(x)
    out = model.transform(x)
    assert out.shape == x.shape and out.dtype == np.float32
    assert not np.allclose(out, x)
    assert len(model.history_) == 3 and all(np.isfinite(h["train_loss"]) for h in model.history_)
    assert model.chosen == "simskip" and not model.uses_labels


def test_same_seed_same_weights_other_seed_differs(blobs) -> None:
    x, _ = blobs
    a = SimSkip(**FAST, seed=1).fit(x)
    b = SimSkip(**FAST, seed=1).fit(x)
    c = SimSkip(**FAST, seed=2).fit(x)
    for (name, pa), pb in zip(a.refiner_.state_dict().items(), b.refiner_.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not np.array_equal(a.transform(x), c.transform(x))


def test_inputs_numpy_memmap_tensor_agree(blobs, tmp_path) -> None:
    x, _ = blobs
    path = tmp_path / "x.npy"
    np.save(path, x)
    mm = np.load(path, mmap_mode="r")
    out_np = SimSkip(**FAST).fit(x).transform(x)
    out_mm = SimSkip(**FAST).fit(mm).transform(mm)
    out_t = SimSkip(**FAST).fit(torch.from_numpy(x)).transform(torch.from_numpy(x))
    assert np.array_equal(out_np, out_mm) and np.array_equal(out_np, out_t)


def test_save_load_identical_outputs(blobs, tmp_path) -> None:
    x, _ = blobs
    model = SimSkip(**FAST, loss_kwargs={"temperature": 0.2}).fit(x)
    model.save(tmp_path / "m")
    loaded = SimSkip.load(tmp_path / "m")
    assert np.array_equal(loaded.transform(x), model.transform(x))
    assert loaded.config_dict() == model.config_dict()
    assert loaded.history_ == model.history_
    assert not any(p.suffix in {".pkl", ".pt", ".bin"} for p in (tmp_path / "m").iterdir())


def test_save_refuses_existing_folder_and_overwrites_on_request(blobs, tmp_path) -> None:
    x, _ = blobs
    model = SimSkip(**FAST).fit(x)
    model.save(tmp_path / "m")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save(tmp_path / "m")
    other = SimSkip(**FAST, seed=5).fit(x)
    other.save(tmp_path / "m", overwrite=True)
    assert np.array_equal(SimSkip.load(tmp_path / "m").transform(x), other.transform(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_failed_save_leaves_nothing(blobs, tmp_path, monkeypatch) -> None:
    x, _ = blobs
    model = SimSkip(**FAST).fit(x)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(serialization, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        model.save(tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_missing_and_corrupt_files(blobs, tmp_path) -> None:
    x, _ = blobs
    model = SimSkip(**FAST).fit(x)
    folder = model.save(tmp_path / "m")
    (folder / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CorruptModelError, match=r"model\.safetensors"):
        SimSkip.load(folder)
    folder = model.save(tmp_path / "n")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CorruptModelError, match=r"config\.json"):
        SimSkip.load(folder)
    folder = model.save(tmp_path / "o")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CorruptModelError, match="missing"):
        SimSkip.load(folder)
    folder = model.save(tmp_path / "p")
    config = json.loads((folder / "config.json").read_text())
    config["refiner"]["dim"] = 99
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CorruptModelError, match="inconsistent"):
        SimSkip.load(folder)
    with pytest.raises(FileNotFoundError):
        SimSkip.load(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        (np.array([[0.0, np.nan], [1.0, 2.0]] * 40, dtype=np.float32), ValueError, "NaN or Inf"),
        (np.array([[0.0, np.inf]] * 80, dtype=np.float32), ValueError, "NaN or Inf"),
        (np.zeros(80, dtype=np.float32), ValueError, "2-D"),
        (np.zeros((80, 2, 2), dtype=np.float32), ValueError, "2-D"),
        (np.zeros((80, 4), dtype=np.int64), TypeError, "floating point"),
        (np.zeros((0, 4), dtype=np.float32), ValueError, "empty"),
        ([[1.0, 2.0]], TypeError, "numpy array"),
    ],
)
def test_bad_input(bad, error, message) -> None:
    with pytest.raises(error, match=message):
        SimSkip(**FAST).fit(bad)


def test_wrong_dimension_and_not_fitted(blobs) -> None:
    x, _ = blobs
    model = SimSkip(**FAST).fit(x)
    with pytest.raises(ValueError, match="dimension 8 but the fitted SimSkip model expects 16"):
        model.transform(x[:, :8])
    with pytest.raises(RuntimeError, match="not fitted"):
        SimSkip().transform(x)


def test_checkpoint_resume_equals_uninterrupted_run(blobs, tmp_path) -> None:
    x, _ = blobs
    full = SimSkip(epochs=4, batch_size=64, progress=False, patience=None).fit(x)
    SimSkip(epochs=2, batch_size=64, progress=False, patience=None, checkpoint_dir=str(tmp_path)).fit(x)
    resumed = SimSkip(
        epochs=4, batch_size=64, progress=False, patience=None, checkpoint_dir=str(tmp_path), resume=True
    ).fit(x)
    assert [h["epoch"] for h in resumed.history_] == [1, 2, 3, 4]
    np.testing.assert_allclose(resumed.transform(x), full.transform(x), rtol=0, atol=1e-6)


def test_early_stopping_restores_best(blobs) -> None:
    x, _ = blobs
    calls = iter([0.5, 0.9, 0.4, 0.3, 0.2, 0.1] + [0.0] * 10)
    model = SimSkip(epochs=20, batch_size=64, progress=False, patience=3).fit(
        x, val_score=lambda r: next(calls)
    )
    assert len(model.history_) == 5  # best at epoch 2, then three epochs without improvement


def test_pair_signals_and_few_label_mode(blobs) -> None:
    x, labels = blobs
    partial = np.where(np.arange(len(x)) % 20 == 0, labels, -1)
    model = SimSkip(**FAST, mutual_knn=5).fit(x, labels=partial, pairs={"edges": np.array([[0, 1], [2, 3]])})
    assert model.uses_labels and model.signals_ == ["mutual_knn", "edges", "labels"]
    with pytest.raises(ValueError, match="signals"):
        SimSkip(**FAST, loss="multisimilarity").fit(x)


def test_multi_similarity_weights_are_kept_with_the_model(blobs, tmp_path) -> None:
    """The learned signal weights are recorded per epoch and after fit, and survive save/load."""
    x, labels = blobs
    partial = np.where(np.arange(len(x)) % 10 == 0, labels, -1)
    model = SimSkip(**FAST, loss="multisimilarity", patience=None).fit(x, labels=partial)
    assert set(model.loss_state_) == {"weight:views", "weight:labels"}
    assert all(set(model.loss_state_) <= set(record) for record in model.history_)
    # the weights are learned: they move away from their start at 1 and differ between epochs
    assert model.loss_state_ != pytest.approx({"weight:views": 1.0, "weight:labels": 1.0})
    assert model.history_[0]["weight:labels"] != pytest.approx(model.history_[-1]["weight:labels"])
    best = min(model.history_, key=lambda record: record["val"])  # the epoch whose weights were restored
    assert best["weight:labels"] == pytest.approx(model.loss_state_["weight:labels"])
    model.save(tmp_path / "ms")
    assert SimSkip.load(tmp_path / "ms").loss_state_ == model.loss_state_
    assert SimSkip(**FAST).fit(x).loss_state_ == {}


def test_auto_mode_keeps_identity_when_nothing_helps(blobs) -> None:
    x, _ = blobs
    rng = np.random.default_rng(0)
    model = SimSkip(**FAST, mode="auto").fit(x, probe=lambda z, seed: float(rng.normal(0.5, 0.01)))
    assert model.chosen == "identity"
    assert np.array_equal(model.transform(x), x)
    assert set(model.selection_["candidates"]) >= {"identity", "whitening", "simskip", "simskip@0.5"}


def test_auto_mode_picks_a_clear_winner_and_saves_it(blobs, tmp_path) -> None:
    x, _ = blobs

    def probe(z: np.ndarray, seed: int) -> float:  # rewards unit-norm rows: centerl2 wins clearly
        return float(-np.abs(np.linalg.norm(z, axis=1) - 1).mean()) + 0.001 * seed

    model = SimSkip(**FAST, mode="auto").fit(x, probe=probe)
    assert model.chosen == "centerl2"
    model.save(tmp_path / "auto")
    loaded = SimSkip.load(tmp_path / "auto")
    assert loaded.chosen == "centerl2"
    assert np.array_equal(loaded.transform(x), model.transform(x))


def test_auto_mode_needs_a_probe(blobs) -> None:
    x, _ = blobs
    with pytest.raises(ValueError, match="probe"):
        SimSkip(**FAST, mode="auto").fit(x)


@pytest.mark.parametrize(
    "kwargs",
    [{"mode": "magic"}, {"alphas": (1.5,)}, {"mutual_knn": 0}, {"epochs": 0}, {"candidates": ("nope",)}],
)
def test_bad_configuration(kwargs) -> None:
    with pytest.raises((ValueError, KeyError)):
        SimSkip(**kwargs)


def test_to_state_and_from_state_round_trip_in_memory() -> None:
    from simskip_core.errors import CorruptModelError

    x = np.random.default_rng(1).normal(size=(200, 8)).astype(np.float32)
    model = SimSkip(epochs=2, batch_size=64, progress=False).fit(x)
    config, tensors = model.to_state()
    again = SimSkip.from_state(config, tensors)
    assert np.array_equal(again.transform(x), model.transform(x))
    with pytest.raises(CorruptModelError, match="dim"):
        SimSkip.from_state({**config, "dim": "eight"}, tensors)
