"""Benchmark tasks, their loaded data, evaluation results and methods: the contract between plugins and the suite."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from simskip_core.embeddings import EmbeddingSet

if TYPE_CHECKING:
    from simskip_core.selection import Probe

__all__ = [
    "EvalResult",
    "Evaluator",
    "ItemScores",
    "LoadOptions",
    "Method",
    "MethodOutput",
    "Task",
    "TaskData",
    "default_cache_dir",
]


def default_cache_dir() -> Path:
    """``$SIMSKIP_CACHE_DIR`` or ``~/.cache/simskip``: where base embeddings and trained encoders are cached."""
    return Path(os.environ.get("SIMSKIP_CACHE_DIR", "~/.cache/simskip")).expanduser()


@dataclass(frozen=True)
class LoadOptions:
    """How a task should load its data.

    Attributes:
        quick: load the smaller subset of the quick suite.
        cache_dir: folder for cached base embeddings (see :mod:`simskip_core.cache`).
        use_cache: read and write the cache; False forces re-extraction.
        progress: show progress bars.
        seed: seed for anything stochastic in loading (subsampling, training a base encoder).
    """

    quick: bool = False
    cache_dir: Path = field(default_factory=lambda: default_cache_dir())
    use_cache: bool = True
    progress: bool = True
    seed: int = 0


@dataclass
class TaskData:
    """What a task's loader returns.

    Attributes:
        train: embeddings the methods are fitted on (labels only for label-using methods and probes).
        test: embeddings the downstream metric is computed on (may be the same items as ``train``
            in transductive settings such as node classification or KG link prediction).
        context: domain objects the evaluator needs (a graph, a trained KG model, similarity pairs).
    """

    train: EmbeddingSet
    test: EmbeddingSet
    context: dict[str, Any] = field(default_factory=dict)


#: ``evaluate(data, train, test, seed, extras) -> EvalResult``: a task's downstream scoring of refined
#: train/test vectors; ``extras`` is the producing method's :attr:`MethodOutput.extras`.
Evaluator = Callable[[TaskData, np.ndarray, np.ndarray, int, Mapping[str, Any]], "EvalResult"]


@dataclass(frozen=True)
class Task:
    """A benchmark task a plugin registers through ``simskip_register_tasks``; it carries its own behaviour.

    Attributes:
        name: unique name, ``"<domain>/<dataset>[-<encoder>]"``.
        domain: plugin domain ("text", "graph", "kg", "vision", ...).
        description: one line for tables and ``simskip bench --list``.
        source: the data source and its version (package and version, file path).
        load: builds the :class:`TaskData`; raise :class:`MissingDataError` with the fix when data is absent.
        primary_metric: the metric verdicts are based on (higher is better).
        metrics: every metric the evaluator reports.
        defaults: SimSkip keyword arguments for this task (same for every seed).
        quick: whether the task is part of ``--suite quick``.
        evaluate: ``evaluate(data, train, test, seed, extras) -> EvalResult``, the downstream metric of
            refined vectors (with per-test-item scores for paired bootstrap tests). None: the
            ``simskip_evaluate`` hook is asked instead (the fallback for tasks written before tasks
            carried their evaluator).
        default_probe: ``default_probe(data) -> Probe | None``, the probe auto mode uses on this task
            (scoring validation splits of the *training* items); None: the ``simskip_default_probe``
            hook is asked. Returning None means the task has no probe.
        pair_signals: ``pair_signals(data) -> {name: (m, 2) row indices} | None``, extra positive-pair
            signals of the training items; None: the ``simskip_pair_signals`` hook is asked.
        methods: the task's own methods (fair domain baselines, refiners that use the domain), run
            next to the core's and to those any plugin adds through ``simskip_task_methods``.
    """

    name: str
    domain: str
    description: str
    source: str
    load: Callable[[LoadOptions], TaskData]
    primary_metric: str
    metrics: tuple[str, ...]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    quick: bool = True
    evaluate: Evaluator | None = None
    default_probe: Callable[[TaskData], Probe | None] | None = None
    pair_signals: Callable[[TaskData], Mapping[str, np.ndarray] | None] | None = None
    methods: tuple[Method, ...] = ()


@dataclass(frozen=True)
class ItemScores:
    """Per-test-item data from which a metric can be recomputed on a bootstrap resample.

    ``kind="mean"``: ``values`` is (n,) and the metric is its mean (accuracy, reciprocal rank, hits).
    ``kind="spearman"``: ``values`` is (n, 2) of (predicted, gold) and the metric is Spearman's rho.
    """

    kind: Literal["mean", "spearman"]
    values: np.ndarray

    def statistic(self, index: np.ndarray | None = None) -> float:
        """The metric on rows ``index`` (all rows when None)."""
        values = self.values if index is None else self.values[index]
        if self.kind == "mean":
            return float(np.mean(values))
        from scipy.stats import spearmanr

        return float(spearmanr(values[:, 0], values[:, 1]).statistic)


@dataclass
class EvalResult:
    """Downstream metrics of one representation, plus per-item scores for paired bootstrap tests."""

    metrics: dict[str, float]
    items: dict[str, ItemScores] = field(default_factory=dict)


@dataclass
class MethodOutput:
    """Vectors a method produced for a task's train and test items, with timing and notes.

    ``info`` is JSON-serialisable and stored with the results; ``extras`` holds in-memory objects the
    method hands to the evaluator (e.g. re-fitted KG relation vectors) and is never stored.
    """

    train: np.ndarray
    test: np.ndarray
    fit_seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    """A representation method the suite compares.

    Attributes:
        name: unique name within a task (e.g. "identity", "simskip-ntxent", "neighbour-average").
        family: "baseline" (non-learned), "simskip", "control" (random residual) or a plugin's own.
        uses_labels: True for label-using rows, reported in their own section.
        run: ``run(task, data, seed, state) -> MethodOutput``; ``state`` is a dict shared by the
            methods of one (task, seed) cell, so a control can read what a trained method did.
        stochastic: False when the output does not depend on the seed (run once, reused).
    """

    name: str
    family: str
    uses_labels: bool
    run: Callable[[Task, TaskData, int, dict[str, Any]], MethodOutput]
    stochastic: bool = True
    description: str = ""
