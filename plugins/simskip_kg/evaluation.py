"""Link-prediction evaluation with PyKEEN's ``RankBasedEvaluator`` (filtered setting), per test triple.

The metrics are PyKEEN's own: ``both.realistic`` MRR and Hits@1/3/10 over head and tail prediction,
filtered against every known true triple (training, validation and test). Next to them this module
keeps, for each test triple, the mean of its head- and tail-side reciprocal rank and hit indicators,
so the mean of the per-triple values *is* PyKEEN's number and a paired bootstrap over test triples
can put an interval on a difference between two models.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from pykeen.constants import LABEL_HEAD, LABEL_TAIL
from pykeen.evaluation import RankBasedEvaluator

from simskip_core.tasks import EvalResult, ItemScores

__all__ = ["METRICS", "bootstrap_difference", "evaluate_link_prediction", "quiet_cpu_memory_warning"]

#: The metrics :func:`evaluate_link_prediction` reports, primary first.
METRICS: tuple[str, ...] = ("mrr", "hits@1", "hits@3", "hits@10")
_HITS = (1, 3, 10)


@contextlib.contextmanager
def quiet_cpu_memory_warning() -> Iterator[None]:
    """Hide torch_max_mem's per-call warning that CPU tensors are "not considered safe" for its GPU
    memory probing (harmless here: the batch size is fixed), for the duration of the block."""
    logger = logging.getLogger("torch_max_mem.api")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def evaluate_link_prediction(
    model: Any,
    mapped_triples: torch.Tensor,
    *,
    filter_triples: Sequence[torch.Tensor] = (),
    batch_size: int = 256,
    progress: bool = False,
) -> EvalResult:
    """Filtered rank-based evaluation of ``model`` on ``mapped_triples`` (head and tail prediction).

    Args:
        model: a PyKEEN model.
        mapped_triples: ``(n, 3)`` id triples to rank (e.g. ``dataset.testing.mapped_triples``).
        filter_triples: further true triples to filter out (training and validation triples; the
            evaluated triples are always filtered too), PyKEEN's ``additional_filter_triples``.
        batch_size: evaluation batch size (fixed, so no memory probing on CPU).
        progress: show PyKEEN's progress bar.

    Returns:
        :class:`EvalResult` with metrics ``mrr``, ``hits@1``, ``hits@3``, ``hits@10`` (identical to
        ``RankBasedEvaluator``'s ``both.realistic`` values) and per-triple :class:`ItemScores` for each.
    """
    evaluator = RankBasedEvaluator(filtered=True, clear_on_finalize=False, batch_size=batch_size)
    was_training = model.training
    model.eval()
    try:
        with quiet_cpu_memory_warning():
            result = evaluator.evaluate(
                model=model,
                mapped_triples=mapped_triples,
                additional_filter_triples=list(filter_triples) or None,
                batch_size=batch_size,
                use_tqdm=progress,
            )
        per_side = []
        for target in (LABEL_HEAD, LABEL_TAIL):
            per_side.append(np.concatenate(evaluator.ranks[target, "realistic"]).astype(np.float64))
    finally:
        evaluator.clear()
        model.train(was_training)
    ranks = np.stack(per_side, axis=1)  # (n, 2): head-side and tail-side realistic rank of each triple
    if ranks.shape[0] != mapped_triples.shape[0]:  # pragma: no cover - PyKEEN changed its batching order
        raise RuntimeError(
            "PyKEEN returned a different number of ranks than triples; cannot align per-triple scores."
        )
    items = {"mrr": ItemScores("mean", (1.0 / ranks).mean(axis=1))}
    for k in _HITS:
        items[f"hits@{k}"] = ItemScores("mean", (ranks <= k).mean(axis=1))
    metrics = {name: score.statistic() for name, score in items.items()}
    # The per-triple values must reproduce PyKEEN's own aggregate (a guard against silent misalignment).
    expected = float(result.get_metric("both.realistic.inverse_harmonic_mean_rank"))
    if not np.isclose(metrics["mrr"], expected, rtol=1e-6, atol=1e-9):  # pragma: no cover
        raise RuntimeError(f"per-triple MRR {metrics['mrr']} differs from PyKEEN's {expected}.")
    return EvalResult(metrics=metrics, items=items)


def bootstrap_difference(
    after: ItemScores, before: ItemScores, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Difference ``after - before`` of a mean metric with a paired bootstrap interval over test triples.

    Returns ``(difference, low, high)``; both scores must come from the same test triples in the same order.
    """
    a, b = np.asarray(after.values, dtype=np.float64), np.asarray(before.values, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(
            f"paired bootstrap needs scores of the same test triples, got {a.shape} and {b.shape}."
        )
    diff = a - b
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, diff.shape[0], size=(n_boot, diff.shape[0]))
    boots = diff[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(boots, [alpha, 1.0 - alpha])
    return float(diff.mean()), float(low), float(high)
