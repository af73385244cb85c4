"""``kill -9`` in the middle of a checkpointed training or a streamed apply, then resume: the same bits as no kill.

The killed run is a subprocess (a real SIGKILL: no clean-up code runs); the uninterrupted and the resumed
runs are computed here. Every run uses one thread, so that they compute alike.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from simskip_core.augment import build_augmentation
from simskip_core.losses import NTXentLoss
from simskip_core.refiner import SkipRefiner
from simskip_core.scale.stream import stream_apply
from simskip_core.train import TrainConfig, fit_refiner

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 5
AUGMENT = [("mask", {"keep_prob": 0.8}), ("noise", {"scale": 0.5})]

TRAIN_SCRIPT = f"""
import os, signal, sys, time
import numpy as np, torch
from simskip_core import train
from simskip_core.augment import build_augmentation
from simskip_core.losses import NTXentLoss
from simskip_core.refiner import SkipRefiner

torch.set_num_threads(1)
data, folder, mode = sys.argv[1:4]
real_save, calls = train._save_checkpoint, [0]

def save(path, tensors, meta):
    calls[0] += 1
    if mode == "kill-in-save" and calls[0] == 3:
        # The new checkpoint is fully written to its temporary file; die just before the rename.
        os.replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
    real_save(path, tensors, meta)
    if mode == "slow":
        time.sleep(0.4)  # time for the test to kill this process after a checkpoint

train._save_checkpoint = save
torch.manual_seed(0)
config = train.TrainConfig(epochs={EPOCHS}, batch_size=32, patience=None, progress=False, checkpoint_dir=folder)
train.fit_refiner(np.load(data), SkipRefiner(16), NTXentLoss(), build_augmentation({AUGMENT!r}), [], config)
"""


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Compute here with one thread, like the subprocesses."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}


def _fit(x: np.ndarray, folder: Path | None, resume: bool = False) -> tuple[dict[str, Any], list[int]]:
    torch.manual_seed(0)
    refiner = SkipRefiner(16)
    config = TrainConfig(
        epochs=EPOCHS,
        batch_size=32,
        patience=None,
        progress=False,
        checkpoint_dir=None if folder is None else str(folder),
        resume=resume,
    )
    history = fit_refiner(x, refiner, NTXentLoss(), build_augmentation(AUGMENT), [], config)
    return refiner.state_dict(), [h["epoch"] for h in history]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, Path, dict[str, Any]]:
    """Training rows, their file, and the weights of a run that nothing interrupted."""
    tmp = tmp_path_factory.mktemp("crash")
    x = np.random.default_rng(0).normal(size=(256, 16)).astype(np.float32)
    np.save(tmp / "x.npy", x)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        full, epochs = _fit(x, None)
    finally:
        torch.set_num_threads(before)
    assert epochs == list(range(1, EPOCHS + 1))
    return x, tmp / "x.npy", full


def _killed_run(path: Path, folder: Path, mode: str) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-c", TRAIN_SCRIPT, str(path), str(folder), mode]
    return subprocess.Popen(args, env=_env(), stderr=subprocess.PIPE)


def _assert_same_weights(left: dict[str, Any], right: dict[str, Any]) -> None:
    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key], right[key]), key


def test_kill_during_a_checkpoint_write_resumes_to_the_same_weights(
    data: tuple[np.ndarray, Path, dict[str, Any]], tmp_path: Path
) -> None:
    x, path, full = data
    proc = _killed_run(path, tmp_path, "kill-in-save")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, stderr.decode()
    names = sorted(p.name for p in tmp_path.iterdir())  # epoch 2's checkpoint and epoch 3's, not yet renamed
    assert len(names) == 2 and names[0].startswith(".checkpoint.") and names[1] == "checkpoint.safetensors"
    resumed, epochs = _fit(x, tmp_path, resume=True)
    assert epochs == list(range(1, EPOCHS + 1))  # 1-2 from the checkpoint, 3-5 trained again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.safetensors"]  # stale temporary gone
    _assert_same_weights(resumed, full)


def test_kill_after_the_first_checkpoint_resumes_to_the_same_weights(
    data: tuple[np.ndarray, Path, dict[str, Any]], tmp_path: Path
) -> None:
    x, path, full = data
    proc = _killed_run(path, tmp_path, "slow")
    deadline = time.monotonic() + 60
    while not (tmp_path / "checkpoint.safetensors").exists():
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 60 s"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    resumed, epochs = _fit(x, tmp_path, resume=True)
    assert epochs == list(range(1, EPOCHS + 1))
    _assert_same_weights(resumed, full)


STREAM_SCRIPT = """
import sys, time, torch
from safetensors.torch import load_file
from simskip_core.refiner import SkipRefiner
from simskip_core.scale import stream

torch.set_num_threads(1)
weights, source, out = sys.argv[1:4]
refiner = SkipRefiner(16)
refiner.load_state_dict(load_file(weights))
stream._Recorder.interval = 0.01
real = stream._write_rows

def slow(fd, offset, array):
    time.sleep(0.05)
    real(fd, offset, array)

stream._write_rows = slow
stream.stream_apply(refiner.eval(), source, out, chunk_rows=100, progress=False)
"""


def test_kill_during_a_stream_reruns_to_the_same_bytes(tmp_path: Path) -> None:
    x = np.random.default_rng(1).normal(size=(3000, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    torch.manual_seed(2)
    refiner = SkipRefiner(16)
    last = refiner.g[-1]
    assert isinstance(last, torch.nn.Linear)
    torch.nn.init.normal_(last.weight, std=0.2)
    save_file(refiner.state_dict(), str(tmp_path / "refiner.safetensors"))
    stream_apply(refiner.eval(), tmp_path / "x.npy", tmp_path / "clean.npy", chunk_rows=100, progress=False)

    out = tmp_path / "out.npy"
    args = [
        sys.executable,
        "-c",
        STREAM_SCRIPT,
        str(tmp_path / "refiner.safetensors"),
        str(tmp_path / "x.npy"),
    ]
    proc = subprocess.Popen([*args, str(out)], env=_env(), stderr=subprocess.PIPE)
    progress = tmp_path / "out.npy.manifest.r0.json"
    deadline = time.monotonic() + 60
    while not (
        progress.exists()
        and len(json.loads(progress.read_text(encoding="utf-8") or "{}").get("done", [])) >= 3
    ):
        assert proc.poll() is None and time.monotonic() < deadline, "the stream ended before the kill"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL and not out.exists()

    result = stream_apply(refiner.eval(), tmp_path / "x.npy", out, chunk_rows=100, progress=False)
    assert result.complete and 3 <= result.chunks_skipped < 30
    assert out.read_bytes() == (tmp_path / "clean.npy").read_bytes()
