"""``simskip refine`` checks first and fails in one line: paths, flag combinations, names, devices.

Most tests make ``SimSkip.fit`` raise, so a check that only happens after training fails the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simskip_core.api import SimSkip
from simskip_core.cli import main

TRACEBACK_ENV = "SIMSKIP_TRACEBACK"

FAST = ["--epochs", "1", "--batch-size", "64", "--quiet"]


@pytest.fixture
def data(blobs, tmp_path: Path) -> Path:
    """The blobs as ``in.npy`` in a fresh folder."""
    np.save(tmp_path / "in.npy", blobs[0])
    return tmp_path / "in.npy"


@pytest.fixture
def model_dir(data: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A model saved by ``simskip refine --save-model``."""
    folder = data.parent / "model"
    assert main(["refine", str(data), *FAST, "--save-model", str(folder)]) == 0
    capsys.readouterr()
    return folder


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training is an error: every check under test must come before it."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained before the check")

    monkeypatch.setattr(SimSkip, "fit", refuse)


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line ``main`` wrote to stderr, without the prefix."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("simskip: error: "), err
    return err.removeprefix("simskip: error: ").strip()


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------------------------------- OUT
def test_a_missing_output_folder_is_refused_before_training(data, no_training, capsys) -> None:
    out = data.parent / "nope" / "out.npy"
    assert main(["refine", str(data), str(out), *FAST]) == 2
    assert "does not exist; create it first" in _error(capsys)


def test_a_read_only_output_folder_is_refused_before_training(data, no_training, monkeypatch, capsys) -> None:
    locked = data.parent / "locked"
    locked.mkdir()
    real_access = os.access
    # root may write anywhere, so the permission is denied through os.access, which the check consults
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))
    model = data.parent / "m"
    code = main(["refine", str(data), str(locked / "out.npy"), *FAST, "--save-model", str(model)])
    assert code == 2
    assert f"the folder {locked} is not writable" in _error(capsys)
    assert not model.exists() and _files(locked) == []


def test_an_output_that_is_a_folder_is_refused(data, no_training, capsys) -> None:
    (data.parent / "out.npy").mkdir()
    assert main(["refine", str(data), str(data.parent / "out.npy"), *FAST]) == 2
    assert "is a folder; give the path of the .npy file" in _error(capsys)


@pytest.mark.parametrize("how", ["same path", "symlink", "inside the shard folder"])
def test_an_output_that_is_the_input_is_refused(data, model_dir, how, capsys) -> None:
    before = np.load(data)
    source, out, extra = data, data, ["--overwrite"]
    if how == "symlink":
        out = data.parent / "link.npy"
        out.symlink_to(data)
    elif how == "inside the shard folder":
        source = data.parent / "shards"
        source.mkdir()
        np.save(source / "a.npy", before)
        out, extra = source / "b.npy", ["--stream"]
    assert main(["refine", str(source), str(out), "--model", str(model_dir), *extra]) == 2
    assert "would overwrite the input" in _error(capsys)
    assert np.array_equal(np.load(data), before)


def test_a_failed_write_leaves_no_temporary_file(data, model_dir, monkeypatch, capsys) -> None:
    def disk_full(file: object, array: object) -> None:
        os.write(file.fileno(), b"half")  # type: ignore[attr-defined]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("simskip_core.cli.np.save", disk_full)
    before = _files(data.parent)
    assert main(["refine", str(data), str(data.parent / "out.npy"), "--model", str(model_dir)]) == 2
    assert "No space left on device" in _error(capsys)
    assert _files(data.parent) == before


def test_output_keeps_the_umask_mode(data, model_dir, capsys) -> None:
    out = data.parent / "out.npy"
    assert main(["refine", str(data), str(out), "--model", str(model_dir)]) == 0
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


# ---------------------------------------------------------------------------------------------- --save-model
def test_save_model_dot_is_refused_before_training(data, no_training, monkeypatch, capsys) -> None:
    monkeypatch.chdir(data.parent)
    assert main(["refine", str(data), "--save-model", ".", "--overwrite-model", *FAST]) == 2
    assert "is the current folder" in _error(capsys)
    assert _files(data.parent) == ["in.npy"]


def test_save_model_into_a_folder_that_is_not_a_model_is_refused(data, no_training, capsys) -> None:
    folder = data.parent / "stuff"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    assert main(["refine", str(data), "--save-model", str(folder), "--overwrite-model", *FAST]) == 2
    assert "is not a saved simskip model" in _error(capsys)
    assert (folder / "notes.txt").read_text() == "mine"


def test_save_model_holding_the_input_is_refused(data, no_training, capsys) -> None:
    assert main(["refine", str(data), "--save-model", str(data.parent), "--overwrite-model", *FAST]) == 2
    assert "which saving the model would replace" in _error(capsys)


def test_save_model_has_its_own_overwrite_flag(data, model_dir, capsys) -> None:
    args = ["refine", str(data), str(data.parent / "o.npy"), *FAST, "--save-model", str(model_dir)]
    assert main([*args, "--overwrite"]) == 2
    assert "pass --overwrite-model to replace it" in _error(capsys)
    assert not (data.parent / "o.npy").exists()
    assert main([*args, "--overwrite-model"]) == 0
    assert (data.parent / "o.npy").exists()


def test_overwrite_model_needs_save_model(data, no_training, capsys) -> None:
    assert main(["refine", str(data), str(data.parent / "o.npy"), "--overwrite-model"]) == 2
    assert "give --save-model DIR too" in _error(capsys)


# ---------------------------------------------------------------------------------------------- training flags
TRAINING_FLAGS = [
    ["--loss", "studentt"],
    ["--epochs", "3"],
    ["--batch-size", "32"],
    ["--lr", "0.1"],
    ["--seed", "1"],
    ["--mutual-knn", "5"],
    ["--labels", "in.npy"],
    ["--pairs", "in.npy"],
    ["--mode", "refine"],
    ["--normalize-output"],
    ["--val-fraction", "0.2"],
    ["--patience", "3"],
    ["--augment-fit-rows", "100"],
    ["--save-model", "m2"],
    ["--checkpoint-dir", "ck"],
    ["--resume", "--checkpoint-dir", "ck"],
]


@pytest.mark.parametrize("flag", TRAINING_FLAGS, ids=[f[0] for f in TRAINING_FLAGS])
def test_training_flags_with_model_are_refused(data, model_dir, flag, monkeypatch, capsys) -> None:
    monkeypatch.chdir(data.parent)
    out = data.parent / "o.npy"
    assert main(["refine", str(data), str(out), "--model", str(model_dir), *flag]) == 2
    message = _error(capsys)
    assert f"{flag[0]}" in message and "would be ignored" in message
    assert not out.exists()


def test_resume_needs_a_checkpoint_dir(data, no_training, capsys) -> None:
    assert main(["refine", str(data), str(data.parent / "o.npy"), "--resume"]) == 2
    assert "give --checkpoint-dir DIR too" in _error(capsys)


def test_checkpoint_dir_and_resume_reach_the_trainer(data, capsys) -> None:
    ckpt = data.parent / "ckpt"
    args = ["refine", str(data), "--batch-size", "64", "--quiet", "--checkpoint-dir", str(ckpt)]
    assert main([*args, "--epochs", "2", "--save-model", str(data.parent / "a")]) == 0
    assert (ckpt / "checkpoint.safetensors").is_file()
    capsys.readouterr()
    assert main([*args, "--epochs", "3", "--resume", "--save-model", str(data.parent / "b")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["epochs"] == 3
    resumed = SimSkip.load(data.parent / "b").history_
    assert resumed[:2] == SimSkip.load(data.parent / "a").history_


# ---------------------------------------------------------------------------------------------- names, inputs, devices
def test_unknown_loss_lists_the_valid_names_before_training(data, no_training, capsys) -> None:
    assert main(["refine", str(data), str(data.parent / "o.npy"), "--loss", "nope"]) == 2
    message = _error(capsys)
    assert message.startswith("unknown loss 'nope'; valid names: ")
    assert all(name in message for name in ("ntxent", "studentt", "spectral", "difficulty", "mscon"))


def test_a_folder_as_input_says_it_is_a_folder(data, model_dir, capsys) -> None:
    assert main(["refine", str(data.parent), str(data.parent / "o.npy"), "--model", str(model_dir)]) == 2
    assert "is a folder; give a .npy file (a folder of .npy shards is accepted with --stream" in _error(
        capsys
    )


@pytest.mark.parametrize(("content", "reason"), [(b"", "No data left"), (b"junk" * 40, "")])
def test_an_unreadable_npy_is_one_line(data, model_dir, content, reason, capsys) -> None:
    bad = data.parent / "bad.npy"
    bad.write_bytes(content)
    assert main(["refine", str(bad), str(data.parent / "o.npy"), "--model", str(model_dir)]) == 2
    message = _error(capsys)
    assert message.startswith(f"input {bad} is not a readable .npy array") and reason in message


def test_cuda_without_cuda_is_refused_before_training(data, no_training, monkeypatch, capsys) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["refine", str(data), str(data.parent / "o.npy"), "--device", "cuda"]) == 2
    assert "CUDA is not available; use --device cpu" in _error(capsys)
    assert main(["refine", str(data), str(data.parent / "o.npy"), "--device", "tpu9"]) == 2
    assert "is not a device" in _error(capsys)


def test_stream_refusal_names_the_cli_flag(data, model_dir, capsys) -> None:
    out = data.parent / "o.npy"
    out.with_name("o.npy.manifest.json").write_text("{broken")
    assert main(["refine", str(data), str(out), "--model", str(model_dir), "--stream", "--quiet"]) == 2
    message = _error(capsys)
    assert "pass --no-resume" in message and "resume=False" not in message
    assert "--no-resume (--no-resume" not in message and "on the command line" not in message
    assert main(["refine", str(data), str(out), "--model", str(model_dir), "--stream", "--no-resume"]) == 0


def test_stream_without_output_is_refused_before_training(data, no_training, capsys) -> None:
    assert main(["refine", str(data), "--save-model", str(data.parent / "m"), "--stream"]) == 2
    assert "--stream writes OUT" in _error(capsys)


# ---------------------------------------------------------------------------------------------- tracebacks
def test_traceback_flag_and_environment_show_the_traceback(data, monkeypatch) -> None:
    args = ["refine", str(data.parent / "missing.npy"), str(data.parent / "o.npy")]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(["--traceback", *args])
    monkeypatch.setenv(TRACEBACK_ENV, "1")
    with pytest.raises(FileNotFoundError):
        main(args)


def test_the_console_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != TRACEBACK_ENV}
    result = subprocess.run(
        [sys.executable, "-m", "simskip_core.cli", "refine", str(tmp_path), str(tmp_path / "o.npy")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"simskip: error: input {tmp_path} is a folder; give a .npy file (a folder of .npy shards is "
        "accepted with --stream --model)."
    ]
