"""Shared test setup: offline hubs, a private cache, small thread counts."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture
def blobs() -> tuple[np.ndarray, np.ndarray]:
    """600 x 16 float32 embeddings in 3 Gaussian clusters, with their labels."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 3
    labels = np.repeat(np.arange(3), 200)
    x = centres[labels] + rng.normal(size=(600, 16))
    return x.astype(np.float32), labels
