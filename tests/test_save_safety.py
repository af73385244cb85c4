"""Model folders: only simskip's own folders are replaced, a killed replace is recovered, writes are fsynced."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import simskip_core.serialization as serialization
from simskip_core import SimSkip
from simskip_core.serialization import is_model_folder, read_model_dir, write_model_dir

FAST = {"epochs": 1, "batch_size": 64, "progress": False}


def _tensors(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((3, 4), value)}


def _write(path: Path, value: float, **kwargs: object) -> Path:
    return write_model_dir(path, {"format": "simskip-model", "value": value}, _tensors(value), **kwargs)


def _value(path: Path) -> float:
    return float(read_model_dir(path)[1]["w"][0, 0])


def _run(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh interpreter (it may kill itself with SIGKILL)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_overwrite_refuses_a_folder_of_user_files(blobs, tmp_path) -> None:
    x, _ = blobs
    folder = tmp_path / "x"
    folder.mkdir()
    np.save(folder / "emb.npy", x)
    model = SimSkip(**FAST).fit(x)
    with pytest.raises(FileExistsError, match=r"not a simskip model folder.*emb\.npy"):
        model.save(folder, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["emb.npy"]
    assert np.array_equal(np.load(folder / "emb.npy"), x)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]  # no staging folder left behind


def test_overwrite_refuses_a_file_and_a_foreign_config(tmp_path) -> None:
    target = tmp_path / "m"
    target.write_text("my notes")
    with pytest.raises(FileExistsError, match="is a file"):
        _write(target, 1.0, overwrite=True)
    assert target.read_text() == "my notes"
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"format": "huggingface", "hidden": 4}))
    with pytest.raises(FileExistsError, match="not a simskip model folder"):
        _write(other, 1.0, overwrite=True)
    assert json.loads((other / "config.json").read_text())["format"] == "huggingface"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "other"]


def test_refuses_a_symbolic_link(tmp_path) -> None:
    real = _write(tmp_path / "real", 1.0)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(FileExistsError, match="symbolic link"):
        _write(link, 2.0, overwrite=True)
    assert _value(real) == 1.0


def test_is_model_folder(tmp_path) -> None:
    assert is_model_folder(_write(tmp_path / "core", 1.0))
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "config.json").write_text(json.dumps({"format": "simskip-structure-aware"}))
    assert is_model_folder(plugin)
    for name, text in [("list", "[1]"), ("int", json.dumps({"format": 3})), ("bad", "{oops")]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(text)
        assert not is_model_folder(tmp_path / name), name
    (tmp_path / "file").write_text("x")
    assert not is_model_folder(tmp_path / "file")
    assert not is_model_folder(tmp_path / "nowhere")


def test_overwrite_replaces_model_folders_and_empty_folders(tmp_path) -> None:
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "config.json").write_text(json.dumps({"format": "simskip-refined-backbone"}))
    (plugin / "refiner").mkdir()
    _write(plugin, 2.0, overwrite=True)
    assert _value(plugin) == 2.0 and not (plugin / "refiner").exists()
    empty = tmp_path / "empty"  # what sentence-transformers creates before asking a module to save
    empty.mkdir()
    _write(empty, 3.0, overwrite=True)
    assert _value(empty) == 3.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "plugin"]


@pytest.mark.parametrize("exchange", [True, False])
def test_replace_with_and_without_atomic_exchange(tmp_path, monkeypatch, exchange) -> None:
    _write(tmp_path / "m", 1.0)
    if not exchange:
        monkeypatch.setattr(serialization, "_exchange", lambda a, b: False)
    _write(tmp_path / "m", 2.0, overwrite=True)
    assert _value(tmp_path / "m") == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_failed_rename_in_puts_the_old_model_back(tmp_path, monkeypatch) -> None:
    _write(tmp_path / "m", 1.0)
    monkeypatch.setattr(serialization, "_exchange", lambda a, b: False)
    real_replace = os.replace
    calls = []

    def replace(src: object, dst: object) -> None:
        calls.append((src, dst))
        if len(calls) == 2:  # the new folder's rename into place
            raise OSError("device went away")
        real_replace(src, dst)

    monkeypatch.setattr(serialization.os, "replace", replace)
    with pytest.raises(OSError, match="device went away"):
        _write(tmp_path / "m", 2.0, overwrite=True)
    monkeypatch.undo()
    assert _value(tmp_path / "m") == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


KILL_BETWEEN_RENAMES = """
    import os, signal
    import torch
    import simskip_core.serialization as s

    s._exchange = lambda a, b: False
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the old folder is aside, the new one not yet in place
            os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst)

    s.os.replace = replace
    s.write_model_dir("m", {"format": "simskip-model"}, {"w": torch.full((3, 4), 2.0)}, overwrite=True)
"""


def test_kill_between_the_two_renames_is_recovered_by_load(tmp_path) -> None:
    _write(tmp_path / "m", 1.0)
    result = _run(KILL_BETWEEN_RENAMES, tmp_path)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert not (tmp_path / "m").exists() and (tmp_path / ".m.simskip-old").is_dir()
    assert _value(tmp_path / "m") == 1.0  # read_model_dir puts the old model back
    assert (tmp_path / "m").is_dir() and not (tmp_path / ".m.simskip-old").exists()


def test_kill_between_the_two_renames_is_recovered_by_the_next_save(tmp_path) -> None:
    _write(tmp_path / "m", 1.0)
    assert _run(KILL_BETWEEN_RENAMES, tmp_path).returncode == -signal.SIGKILL
    with pytest.raises(FileExistsError, match="overwrite=True"):
        _write(tmp_path / "m", 3.0)  # the restored model is not silently replaced
    _write(tmp_path / "m", 3.0, overwrite=True)
    assert _value(tmp_path / "m") == 3.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no staging or old folder left


def test_old_folder_left_after_the_swap_is_removed_by_the_next_save(tmp_path) -> None:
    _write(tmp_path / "m", 1.0)
    shutil.copytree(tmp_path / "m", tmp_path / ".m.simskip-old")  # killed before the old one was deleted
    assert _value(tmp_path / "m") == 1.0
    _write(tmp_path / "m", 2.0, overwrite=True)
    assert _value(tmp_path / "m") == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_stale_staging_of_a_killed_save_is_removed(tmp_path) -> None:
    script = """
        import os, signal
        from simskip_core.serialization import atomic_folder

        with atomic_folder("m") as staging:
            (staging / "model.safetensors").write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGKILL)
    """
    assert _run(script, tmp_path).returncode == -signal.SIGKILL
    stale = [p.name for p in tmp_path.iterdir()]
    assert len(stale) == 1 and stale[0].endswith(".simskip-staging") and not (tmp_path / "m").exists()
    live = tmp_path / f".m.{os.getpid()}.live.simskip-staging"  # a save in progress in a running process
    live.mkdir()
    mine = tmp_path / ".m.notes"  # looks similar, but not simskip's pattern
    mine.mkdir()
    _write(tmp_path / "m", 1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".m.notes", live.name, "m"])


def test_files_and_folders_are_fsynced(tmp_path, monkeypatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    _write(tmp_path / "m", 1.0)
    assert {"model.safetensors", "config.json", tmp_path.name} <= set(synced)
    assert any(name.endswith(".simskip-staging") for name in synced)  # the folder itself before the rename
