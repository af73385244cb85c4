"""Loading checks what it loads: the weights' sha256, finite weights, and every config.json key."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from simskip_core import SimSkip
from simskip_core.errors import CorruptModelError

FAST = {"epochs": 2, "batch_size": 64, "progress": False}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A saved model folder, the data and the model's output on it."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    model = SimSkip(**FAST).fit(x)
    folder = model.save(tmp_path_factory.mktemp("models") / "m")
    return folder, x, model.transform(x)


def _copy(saved_folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    target.mkdir()
    for name in ("config.json", "model.safetensors"):
        (target / name).write_bytes((saved_folder / name).read_bytes())
    return target


def _edit_config(folder: Path, edit) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


def test_config_records_the_weights_sha256(saved) -> None:
    folder, _, _ = saved
    config = json.loads((folder / "config.json").read_text())
    assert config["weights_sha256"] == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def test_a_flipped_bit_is_corrupt(saved, tmp_path) -> None:
    folder = _copy(saved[0], tmp_path)
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-3] ^= 0x40  # a weight's exponent bit: loads as a valid file with another value
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CorruptModelError, match=r"model\.safetensors does not match the sha256"):
        SimSkip.load(folder)


def test_nan_weights_are_corrupt(saved, tmp_path) -> None:
    folder = _copy(saved[0], tmp_path)
    tensors = load_file(str(folder / "model.safetensors"))
    name = sorted(tensors)[0]
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, str(folder / "model.safetensors"))
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    _edit_config(folder, lambda c: c.update(weights_sha256=digest))  # consistent hash, bad values
    with pytest.raises(CorruptModelError, match=rf"NaN or Inf in tensor '{name}'"):
        SimSkip.load(folder)


def _legacy(config: dict) -> None:
    """The config.json layout simskip wrote before hashes, fit notes and the newer parameters."""
    for key in ("weights_sha256", "fit_notes"):
        del config[key]
    for key in ("min_delta", "augment_fit_rows"):
        del config["params"][key]
    for record in config["history"]:
        del record["batch_size"]


def test_folder_saved_before_hashes_loads_with_a_warning(saved, tmp_path, caplog) -> None:
    folder, x, expected = saved
    folder = _copy(folder, tmp_path)
    _edit_config(folder, _legacy)
    with caplog.at_level(logging.WARNING, logger="simskip_core.serialization"):
        model = SimSkip.load(folder)
    assert np.array_equal(model.transform(x), expected)
    assert any(
        "weights_sha256" in r.getMessage() and "older simskip" in r.getMessage() for r in caplog.records
    )
    assert model.fit_notes_ == [] and model.epochs == 2 and model.min_delta == 1e-4


def _set(path: str, value: object):
    def edit(config: dict) -> None:
        *parents, key = path.split(".")
        for parent in parents:
            config = config[parent]
        config[key] = value

    return edit


def _drop(path: str):
    def edit(config: dict) -> None:
        *parents, key = path.split(".")
        for parent in parents:
            config = config[parent]
        del config[key]

    return edit


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (_set("format_version", "2"), "format_version"),
        (_set("format_version", None), "format_version"),
        (_set("format_version", 1.5), "format_version"),
        (_set("format_version", 0), "format_version"),
        (_drop("format_version"), "format_version"),
        (_drop("dim"), "dim"),
        (_set("dim", 99), "dim"),
        (_set("dim", "8"), "dim"),
        (_set("dim", True), "dim"),
        (_drop("params"), "params"),
        (_set("params", [1, 2]), "params"),
        (_drop("params.epochs"), "params.epochs"),
        (_set("params.epochs", "ten"), "params.epochs"),
        (_set("params.depth", 2.5), "params.depth"),
        (_set("params.normalize_output", 1), "params.normalize_output"),
        (_set("params.augment", [["mask"]]), "params.augment"),
        (_set("params.mode", "magic"), "params"),
        (_set("params.surprise", 1), "params"),
        (_drop("refiner"), "refiner"),
        (_set("refiner.dim", 99), "dim"),
        (_set("refiner.hidden_dim", 5), "refiner"),
        (_set("refiner.depth", "2"), "refiner"),
        (_drop("module"), "module"),
        (_set("module.kind", "rocket"), "module"),
        (_drop("module.config"), "config"),
        (_set("history", {"epoch": 1}), "history"),
        (_set("uses_labels", "no"), "uses_labels"),
        (_set("weights_sha256", 12), "weights_sha256"),
    ],
)
def test_every_config_problem_is_corrupt_model_error_naming_the_key(saved, tmp_path, edit, key) -> None:
    folder = _copy(saved[0], tmp_path)
    _edit_config(folder, edit)
    with pytest.raises(CorruptModelError, match=re.escape(f"key '{key}'")):
        SimSkip.load(folder)


def test_unreadable_weights_say_cannot_read(saved, tmp_path, monkeypatch) -> None:
    folder = _copy(saved[0], tmp_path)
    weights = folder / "model.safetensors"
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self == weights:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(PermissionError, match=r"cannot read .*model\.safetensors") as info:
        SimSkip.load(folder)
    assert not isinstance(info.value, CorruptModelError)
    assert "corrupt" not in str(info.value)


def test_a_file_given_as_model_folder(tmp_path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(CorruptModelError, match="is a file, not a model folder"):
        SimSkip.load(tmp_path / "model.safetensors")
