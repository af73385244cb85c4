"""Shared test setup: offline hubs, a private cache, small thread counts, and fixtures used by several files."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
# PyKEEN caches its datasets under PYSTOW_HOME, and reads it once, when pykeen is imported: set it here,
# before any test module imports pykeen, to keep the user's home out of the tests.
os.environ["PYSTOW_HOME"] = tempfile.mkdtemp(prefix="simskip-kg-pystow-")

import numpy as np
import pytest
import torch

if TYPE_CHECKING:
    from pykeen.datasets import Nations

torch.set_num_threads(2)
_PYSTOW = os.environ["PYSTOW_HOME"]

SavedModel = tuple[Path, np.ndarray, np.ndarray]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove the private PYSTOW_HOME."""
    shutil.rmtree(_PYSTOW, ignore_errors=True)


@pytest.fixture
def blobs() -> tuple[np.ndarray, np.ndarray]:
    """600 x 16 float32 embeddings in 3 Gaussian clusters, with their labels."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 3
    labels = np.repeat(np.arange(3), 200)
    x = centres[labels] + rng.normal(size=(600, 16))
    return x.astype(np.float32), labels


@pytest.fixture(scope="session")
def nations() -> Nations:
    """PyKEEN's Nations dataset (loaded from the copy pykeen ships, under the private PYSTOW_HOME)."""
    from pykeen.datasets import Nations

    return Nations()


@pytest.fixture
def npy_rows(tmp_path: Path) -> Callable[[int, int], tuple[np.ndarray, Path]]:
    """``npy_rows(n, d)`` saves n x d standard normal float32 rows (seed 0) to ``tmp_path / "x.npy"``
    and returns the rows and the path."""

    def write(n: int, d: int) -> tuple[np.ndarray, Path]:
        x = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
        path = tmp_path / "x.npy"
        np.save(path, x)
        return x, path

    return write


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., SavedModel]:
    """``saved_model(n, d, seed, read_only=False)`` fits ``SimSkip(epochs=2, batch_size=64)`` on n x d
    standard normal float32 rows of ``seed``, saves it and returns its folder, the rows (read-only if
    asked) and ``SimSkip.transform`` of them."""
    from simskip_core import SimSkip

    def fit(n: int, d: int, seed: int, *, read_only: bool = False) -> SavedModel:
        x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
        model = SimSkip(epochs=2, batch_size=64, progress=False).fit(x)
        path = model.save(tmp_path_factory.mktemp("model") / "refiner")
        x.flags.writeable = not read_only
        return path, x, model.transform(x)

    return fit
