"""Checkpoints resume only the run they belong to, are written as one file, and remember that a run finished."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from simskip_core import train as train_module
from simskip_core.augment import build_augmentation
from simskip_core.errors import CorruptModelError
from simskip_core.losses import NTXentLoss
from simskip_core.refiner import SkipRefiner
from simskip_core.train import TrainConfig, fit_refiner

N, D = 120, 8


def _data(seed: int = 0, n: int = N, d: int = D) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def _fit(
    x: np.ndarray,
    folder: Path,
    *,
    resume: bool = False,
    loss: NTXentLoss | None = None,
    augment: str = "mask",
    hidden_dim: int | None = None,
    val_score: Any = None,
    **config: Any,
) -> tuple[SkipRefiner, list[dict[str, Any]]]:
    torch.manual_seed(0)
    refiner = SkipRefiner(x.shape[1], hidden_dim=hidden_dim)
    options: dict[str, Any] = {"epochs": 2, "batch_size": 32, "patience": None, "progress": False, **config}
    train_config = TrainConfig(checkpoint_dir=str(folder), resume=resume, **options)
    history = fit_refiner(
        x, refiner, loss or NTXentLoss(), build_augmentation(augment), [], train_config, val_score=val_score
    )
    return refiner, history


def _state(refiner: SkipRefiner) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in refiner.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"x": _data(seed=1)}, "data (other rows)"),
        ({"x": _data(n=N + 8)}, "data shape"),
        ({"seed": 5}, "seed (0 -> 5)"),
        ({"lr": 0.01}, "lr (0.001 -> 0.01)"),
        ({"batch_size": 16}, "batch_size (32 -> 16)"),
        ({"val_fraction": 0.2}, "val_fraction"),
        ({"loss": NTXentLoss(temperature=0.2)}, "loss"),
        ({"augment": "noise"}, "augmentation"),
        ({"hidden_dim": 4}, "architecture (hidden_dim: 8 -> 4)"),
    ],
)
def test_resume_refuses_a_checkpoint_of_another_run(
    tmp_path: Path, change: dict[str, Any], named: str
) -> None:
    _fit(_data(), tmp_path)
    arguments: dict[str, Any] = {"x": _data(), **change}
    with pytest.raises(ValueError, match="belongs to another run") as error:
        _fit(arguments.pop("x"), tmp_path, resume=True, epochs=3, **arguments)
    message = str(error.value)
    assert named in message and "checkpoint.safetensors" in message
    assert "--checkpoint-dir" in message and "without resume" in message


def test_checkpoint_of_another_dimension_says_which_and_what_to_do(tmp_path: Path) -> None:
    _fit(_data(), tmp_path)
    with pytest.raises(ValueError) as error:
        _fit(_data(d=D + 4), tmp_path, resume=True, epochs=3)
    message = str(error.value)
    assert "size mismatch" not in message and str(tmp_path / "checkpoint.safetensors") in message
    assert "data shape ([120, 8] -> [120, 12])" in message and "architecture (dim: 8 -> 12" in message


def test_same_run_resumes_and_more_epochs_continue(tmp_path: Path) -> None:
    x = _data()
    full, full_history = _fit(x, tmp_path / "full", epochs=4)
    _fit(x, tmp_path / "ckpt", epochs=2)
    resumed, history = _fit(x, tmp_path / "ckpt", resume=True, epochs=4)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert [h["train_loss"] for h in history] == [h["train_loss"] for h in full_history]
    assert _same(_state(resumed), _state(full))


def test_resuming_a_run_that_stopped_early_trains_nothing(tmp_path: Path) -> None:
    x = _data()
    # A constant validation score: epoch 1 is the best, epoch 2 does not improve, patience 1 stops there.
    stopped, history = _fit(x, tmp_path, epochs=10, patience=1, val_score=lambda _: 0.0)
    assert len(history) == 2
    resumed, again = _fit(x, tmp_path, resume=True, epochs=10, patience=1, val_score=lambda _: 0.0)
    assert again == history  # no third epoch
    assert _same(_state(resumed), _state(stopped))  # the best (epoch 1) weights, as at the end of the run
    assert _meta(tmp_path)["stopped"] == "early"


def test_resuming_a_run_that_reached_its_epochs_trains_nothing(tmp_path: Path) -> None:
    x = _data()
    done, history = _fit(x, tmp_path, epochs=2)
    assert _meta(tmp_path)["stopped"] == "epochs"
    resumed, again = _fit(x, tmp_path, resume=True, epochs=2)
    assert again == history and _same(_state(resumed), _state(done))


def _meta(folder: Path) -> dict[str, Any]:
    with safe_open(str(folder / "checkpoint.safetensors"), framework="pt") as handle:
        header = handle.metadata()
    assert header["format"] == "simskip-checkpoint" and header["version"] == "2"
    meta: dict[str, Any] = json.loads(header["meta"])
    return meta


def test_checkpoint_is_one_safetensors_file_with_json_metadata(tmp_path: Path) -> None:
    _fit(_data(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.safetensors"]
    with safe_open(str(tmp_path / "checkpoint.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())
    assert any(k.startswith("optim.") for k in keys) and {"generator", "torch_rng"} <= keys
    meta = _meta(tmp_path)
    assert meta["epoch"] == 2 and meta["fingerprint"]["seed"] == 0
    assert meta["fingerprint"]["pair signals"] == []


def test_failed_write_keeps_the_previous_checkpoint_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = _data()
    _fit(x, tmp_path, epochs=1)
    before = (tmp_path / "checkpoint.safetensors").read_bytes()
    real_replace = os.replace

    def failing(src: Any, dst: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(train_module.os, "replace", failing)
    with pytest.raises(OSError, match="disk full"):
        _fit(x, tmp_path, resume=True, epochs=2)
    monkeypatch.setattr(train_module.os, "replace", real_replace)
    assert (tmp_path / "checkpoint.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.safetensors"]  # no temporary left


def test_stale_temporary_of_a_killed_write_is_removed(tmp_path: Path) -> None:
    _fit(_data(), tmp_path, epochs=1)
    (tmp_path / ".checkpoint.abc123.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / "notes.tmp").write_text("the user's", encoding="utf-8")
    _fit(_data(), tmp_path, resume=True, epochs=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.safetensors", "notes.tmp"]


def test_old_two_file_checkpoint_is_refused_clearly(tmp_path: Path) -> None:
    save_file({"refiner.g.0.weight": torch.zeros(2, 2)}, str(tmp_path / "checkpoint.safetensors"))
    (tmp_path / "checkpoint.json").write_text(json.dumps({"epoch": 1}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"older simskip.*--checkpoint-dir"):
        _fit(_data(), tmp_path, resume=True)
    (tmp_path / "checkpoint.safetensors").unlink()
    with pytest.raises(ValueError, match="older simskip"):
        _fit(_data(), tmp_path, resume=True)


def test_unreadable_checkpoint_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "checkpoint.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CorruptModelError, match=r"checkpoint\.safetensors is unreadable"):
        _fit(_data(), tmp_path, resume=True)
