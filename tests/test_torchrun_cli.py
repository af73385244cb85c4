"""The CLI under torchrun (2 gloo processes on the CPU): train and save a model, stream-apply it; the deprecated entry.

``python -m torch.distributed.run`` is torchrun; the CLI initialises the process group itself when
torchrun sets ``RANK``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from simskip_core import SimSkip

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _torchrun(*args: str) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return [*launcher, "-m", "simskip_core", *args]


def _summaries(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def _fit_summaries(stdout: str) -> list[dict[str, object]]:
    """The training summaries' model folder and epoch count (they also carry losses and timings)."""
    return [{"saved": s["saved"], "epochs": s["epochs"]} for s in _summaries(stdout)]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Apply here with one thread, as torchrun's processes do."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, np.ndarray, subprocess.CompletedProcess[str]]:
    """A model trained and saved by two torchrun processes."""
    tmp = tmp_path_factory.mktemp("torchrun")
    x = np.random.default_rng(0).normal(size=(400, 16)).astype(np.float32)
    np.save(tmp / "emb.npy", x)
    proc = _run(
        _torchrun("refine", "emb.npy", "--save-model", "M", "--epochs", "2", "--batch-size", "64", "--quiet"),
        tmp,
    )
    return tmp, x, proc


@pytest.mark.slow
def test_torchrun_trains_and_saves_a_loadable_model(
    trained: tuple[Path, np.ndarray, subprocess.CompletedProcess[str]],
) -> None:
    tmp, x, proc = trained
    assert _fit_summaries(proc.stdout) == [{"saved": "M", "epochs": 2}]  # printed by rank 0 only
    assert _summaries(proc.stdout)[0]["world_size"] == 2
    model = SimSkip.load(tmp / "M")
    assert model.transform(x).shape == x.shape and len(model.history_) == 2


@pytest.mark.slow
def test_torchrun_stream_equals_in_memory_transform(
    trained: tuple[Path, np.ndarray, subprocess.CompletedProcess[str]],
) -> None:
    tmp, x, _ = trained
    args = ("refine", "emb.npy", "out.npy", "--model", "M", "--stream", "--chunk-rows", "150", "--quiet")
    proc = _run(_torchrun(*args), tmp)
    assert _summaries(proc.stdout) == [{"output": "out.npy", "shape": [400, 16], "complete": True}]
    assert np.array_equal(np.load(tmp / "out.npy"), SimSkip.load(tmp / "M").transform(x))
    assert sorted(p.name for p in tmp.iterdir() if p.name.startswith("out.npy")) == [
        "out.npy",
        "out.npy.manifest.json",
    ]


@pytest.mark.slow
def test_deprecated_distributed_entry_translates_train_and_apply(
    trained: tuple[Path, np.ndarray, subprocess.CompletedProcess[str]],
) -> None:
    tmp, x, _ = trained
    old = [sys.executable, "-W", "always::DeprecationWarning", "-m", "simskip_core.distributed"]
    train = _run([*old, "train", "emb.npy", "--save-model", "M-old", "--epochs", "1", "--quiet"], tmp)
    assert "deprecated" in train.stderr and _fit_summaries(train.stdout) == [{"saved": "M-old", "epochs": 1}]
    apply = _run([*old, "apply", "--model", "M-old", "emb.npy", "old.npy", "--quiet"], tmp)
    assert _summaries(apply.stdout)[0]["complete"] is True
    assert np.array_equal(np.load(tmp / "old.npy"), SimSkip.load(tmp / "M-old").transform(x))
