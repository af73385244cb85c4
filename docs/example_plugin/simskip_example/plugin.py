"""Hook implementations of the example plugin: a loss, an augmentation and a toy benchmark task that
carries its own evaluation."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from simskip_core import EmbeddingSet, hookimpl
from simskip_core.augment import Augmentation
from simskip_core.evaluation import classification_eval
from simskip_core.losses import ContrastiveLoss
from simskip_core.tasks import EvalResult, LoadOptions, Task, TaskData


class CosineAlignLoss(ContrastiveLoss):
    """Pulls the two views together: 1 - mean cosine similarity (no negatives; a toy)."""

    def forward(self, z_a, z_b, *, positives=None, features=None, signals=None):
        self.check_views(z_a, z_b)
        return 1 - torch.nn.functional.cosine_similarity(z_a, z_b, dim=1).mean()


class SignFlip(Augmentation):
    """Flips the sign of each feature with probability ``p``."""

    def __init__(self, p: float = 0.1) -> None:
        self.p = p

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        flip = torch.rand(x.shape, generator=generator) < self.p
        return torch.where(flip, -x, x)

    def config(self) -> dict:
        return {"p": self.p}


def _load_blobs(options: LoadOptions) -> TaskData:
    rng = np.random.default_rng(options.seed)
    labels = np.repeat(np.arange(3), 100)
    x = (rng.normal(size=(3, 8)) * 3)[labels] + rng.normal(size=(300, 8))
    train, test = np.arange(0, 300, 2), np.arange(1, 300, 2)
    data = EmbeddingSet(x.astype(np.float32), labels=labels)
    return TaskData(train=data.subset(train), test=data.subset(test))


def _evaluate_blobs(
    data: TaskData, train: np.ndarray, test: np.ndarray, seed: int, extras: Mapping[str, Any]
) -> EvalResult:
    """Score the toy task with the core's shared classification metrics (probe and k-NN accuracy)."""
    return classification_eval(train, data.train.labels, test, data.test.labels, seed=seed)


TASK = Task(
    name="example/blobs",
    domain="example",
    description="three Gaussian blobs in 8-D",
    source="synthetic (numpy default_rng)",
    load=_load_blobs,
    primary_metric="probe_acc",
    metrics=("probe_acc", "probe_macro_f1", "knn5_acc"),
    defaults={"epochs": 2, "batch_size": 64},
    evaluate=_evaluate_blobs,
)


@hookimpl
def simskip_register_losses(register: Callable[[type[ContrastiveLoss]], None]) -> None:
    """Make ``loss="cosinealign"`` available."""
    register(CosineAlignLoss)


@hookimpl
def simskip_register_augmentations(register: Callable[[type[Augmentation]], None]) -> None:
    """Make the ``"signflip"`` augmentation available."""
    register(SignFlip)


@hookimpl
def simskip_register_tasks(register: Callable[[Task], None]) -> None:
    """Register the toy task."""
    register(TASK)
