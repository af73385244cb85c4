"""The k-curve of query adapters on text/debian_retrieval: nDCG@10 with k labelled (query, document) pairs.

Rows, all on the same split and pairs: raw embeddings; the linear query adapter (MultipleNegativesRanking
loss, the LlamaIndex / Chroma recipe); the SimSkip query adapter (in-batch + mined negatives); the
symmetric SimSkip stage trained with the same pairs as positive pairs (applied to queries and
documents); and the label-free rows (SimSkip NT-Xent, centring + L2, whitening) fitted on the training
queries and the corpus. Both query adapters hold out 20% of their k queries and keep the epoch of best
validation nDCG@10 (epoch 0 = the identity). Intervals: the suite's paired bootstrap over test queries.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/retrieval_k_curve.py --ks 100 1000
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/retrieval_k_curve.py --full --ks 100 1000 10000

``--select`` prints instead the rule that chose the adapters' default settings, using the training
queries only: every setting of a small grid is fitted on all training queries with three validation
splits (seeds 0, 1, 2), and ranked by the mean validation nDCG@10 gain over the identity at the kept
epoch (ties: the earlier grid entry). No test query is read.

The task's quick version is used (2,000 documents, 500 test queries, up to 1,000 training queries),
or with ``--full`` the full one (every description, about 61,000 documents; 2,000 test and 10,000
training queries); its embeddings come from the suite's cache (``$SIMSKIP_CACHE_DIR``), encoded once
(the full corpus takes about 50 minutes on 2 CPU cores the first time).
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from simskip_text.adapter import fit_info, fit_linear_adapter, fit_query_adapter
from simskip_text.retrieval import retrieval_eval
from simskip_text.tasks import TEXT_DEFAULTS, text_tasks

from simskip_core.api import SimSkip
from simskip_core.baselines import baseline_resolver
from simskip_core.bench.stats import MethodRecord, PairedBootstrap
from simskip_core.tasks import EvalResult, LoadOptions


def _apply(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out: np.ndarray = module(torch.as_tensor(x)).numpy()
    return out


def _record(name: str, result: EvalResult) -> MethodRecord:
    """A deterministic row (one result for every seed)."""
    return MethodRecord(name, "row", False, metrics={None: result.metrics}, items={None: result.items})


#: The grids ``--select`` searches (the defaults of fit_query_adapter / fit_linear_adapter come from it).
QUERY_GRID: dict[str, list[Any]] = {
    "lr": [1e-3, 3e-4, 1e-4],
    "hidden_dim": [None, 64],
    "weight_decay": [1e-4, 1.0],
    "temperature": [0.02, 0.05],
    "negatives": [8, 32],
}
LINEAR_GRID: dict[str, list[Any]] = {"lr": [1e-3, 3e-4, 1e-4], "temperature": [0.02, 0.05]}
SELECT_SEEDS = (0, 1, 2)


def _validation_gain(fit: Callable[..., Any], q: np.ndarray, docs: np.ndarray, rel: list, **kw: Any) -> float:
    gains = []
    for seed in SELECT_SEEDS:
        info = fit_info(fit(q, docs, rel, seed=seed, **kw))
        gains.append(info.val_ndcg[info.best_epoch] - info.val_ndcg[0])
    return float(np.mean(gains))


def _select(train_q: np.ndarray, docs: np.ndarray, train_relevant: list) -> None:
    for label, fit, grid in (
        ("simskip-query", fit_query_adapter, QUERY_GRID),
        ("linear-query", fit_linear_adapter, LINEAR_GRID),
    ):
        scored = []
        for values in itertools.product(*grid.values()):
            settings = dict(zip(grid, values))
            scored.append((_validation_gain(fit, train_q, docs, train_relevant, **settings), settings))
        ranked = sorted(enumerate(scored), key=lambda item: (-item[1][0], item[0]))
        print(f"{label}: mean validation nDCG@10 gain over the identity, seeds {SELECT_SEEDS}")
        for _, (gain, settings) in ranked:
            print(f"  {gain:+.4f}  {settings}")


def _fit_note(adapter: torch.nn.Module, seconds: float) -> str:
    info = fit_info(adapter)
    val = info.val_ndcg
    return f"epoch {info.best_epoch}/{info.epochs_run}, val {val[0]:.3f}->{val[info.best_epoch]:.3f}, {seconds:.0f}s"


def _seeded(name: str, results: dict[int, EvalResult]) -> MethodRecord:
    return MethodRecord(
        name,
        "row",
        True,
        metrics={s: r.metrics for s, r in results.items()},
        items={s: r.items for s, r in results.items()},
    )


def _label_free_rows(data: Any, test_q: np.ndarray, docs: np.ndarray, relevant: list, seed: int) -> list:
    rows: list[tuple[MethodRecord, str]] = []
    for name in ("centerl2", "whitening"):
        fitted = baseline_resolver.make(name).fit(data.train.vectors)
        result = retrieval_eval(fitted.transform(test_q), fitted.transform(docs), relevant)
        rows.append((_record(name, result), "label-free"))
    tic = time.perf_counter()
    free = SimSkip(**TEXT_DEFAULTS, seed=seed).fit(data.train.vectors)
    result = retrieval_eval(free.transform(test_q), free.transform(docs), relevant)
    rows.append(
        (
            _seeded("simskip-ntxent", {seed: result}),
            f"label-free, seed {seed} ({time.perf_counter() - tic:.0f}s)",
        )
    )
    return rows


def _k_rows(args: argparse.Namespace, data: Any, k: int) -> list[tuple[MethodRecord, str]]:
    """The rows of one k: both query adapters for every seed, the symmetric stage for the first."""
    n_train, n_test = data.context["n_train_queries"], data.context["n_test_queries"]
    train_q, docs = data.train.vectors[:n_train], data.train.vectors[n_train:]
    test_q, relevant = data.test.vectors[:n_test], data.context["test_relevant"]
    query: dict[int, EvalResult] = {}
    linear: dict[int, EvalResult] = {}
    notes: dict[str, list[str]] = {"query": [], "linear": []}
    symmetric: tuple[MethodRecord, str] | None = None
    for seed in args.seeds:
        rng = np.random.default_rng([seed, k])
        chosen = np.sort(rng.choice(n_train, size=min(k, n_train), replace=False))
        q, rel = train_q[chosen], [data.context["train_relevant"][i] for i in chosen]
        tic = time.perf_counter()
        adapter = fit_query_adapter(q, docs, rel, epochs=args.epochs, seed=seed)
        query[seed] = retrieval_eval(_apply(adapter, test_q), docs, relevant)
        notes["query"].append(_fit_note(adapter, time.perf_counter() - tic))
        tic = time.perf_counter()
        fitted = fit_linear_adapter(q, docs, rel, epochs=args.epochs, seed=seed)
        linear[seed] = retrieval_eval(_apply(fitted, test_q), docs, relevant)
        notes["linear"].append(_fit_note(fitted, time.perf_counter() - tic))
        if symmetric is None and not args.no_symmetric:
            pairs = np.array(
                [(i, n_train + int(d)) for i, docs_i in zip(chosen, rel) for d in docs_i], dtype=np.int64
            )
            tic = time.perf_counter()
            sym = SimSkip(**TEXT_DEFAULTS, seed=seed).fit(data.train.vectors, pairs={"qrels": pairs})
            result = retrieval_eval(sym.transform(test_q), sym.transform(docs), relevant)
            note = f"seed {seed}, {time.perf_counter() - tic:.0f}s"
            symmetric = (_seeded(f"simskip-symmetric@{k}", {seed: result}), note)
    rows = [
        (_seeded(f"simskip-query@{k}", query), "; ".join(notes["query"])),
        (_seeded(f"linear-query@{k}", linear), "; ".join(notes["linear"])),
    ]
    return rows + ([symmetric] if symmetric else [])


def _print_table(rows: list[tuple[MethodRecord, str]]) -> None:
    boot = PairedBootstrap(n_boot=2000, seed=0)
    by_name = {record.name: record for record, _ in rows}
    print(
        "| row | nDCG@10 | MRR@10 | Recall@100 | vs raw: nDCG@10 diff [95% CI], p | vs linear (same k) | fit |"
    )
    print("|---|---|---|---|---|---|---|")
    for record, note in rows:
        name = record.name
        mean = {m: float(np.mean(record.values(m))) for m in ("ndcg@10", "mrr@10", "recall@100")}
        vs_raw = vs_linear = "-"
        if name != "raw":
            c = boot.compare(record, by_name["raw"], "ndcg@10")
            vs_raw = f"{c.diff:+.4f} [{c.ci_low:+.4f}, {c.ci_high:+.4f}], p={c.p_value:.3f}"
        if name.startswith("simskip-query@"):
            c = boot.compare(record, by_name["linear-query@" + name.split("@")[1]], "ndcg@10")
            vs_linear = f"{c.diff:+.4f} [{c.ci_low:+.4f}, {c.ci_high:+.4f}], p={c.p_value:.3f}"
        print(
            f"| {name} | {mean['ndcg@10']:.4f} | {mean['mrr@10']:.4f} | {mean['recall@100']:.4f} "
            f"| {vs_raw} | {vs_linear} | {note} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[100, 1000])
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0],
        help="seeds of the pair draw and the adapters' fits (the symmetric and label-free rows use the first)",
    )
    parser.add_argument("--epochs", type=int, default=100, help="most epochs of the query adapters")
    parser.add_argument("--select", action="store_true", help="run the settings search on training queries")
    parser.add_argument(
        "--full", action="store_true", help="the task's full version (about 61,000 documents)"
    )
    parser.add_argument("--no-symmetric", action="store_true", help="leave out the symmetric SimSkip rows")
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = next(t for t in text_tasks() if t.name == "text/debian_retrieval")
    data = task.load(LoadOptions(quick=not args.full, progress=False))
    n_train, n_test = data.context["n_train_queries"], data.context["n_test_queries"]
    train_q, docs = data.train.vectors[:n_train], data.train.vectors[n_train:]
    if args.select:
        _select(train_q, docs, data.context["train_relevant"])
        return
    test_q, relevant = data.test.vectors[:n_test], data.context["test_relevant"]
    print(
        f"corpus {len(docs)} documents, {n_test} test queries, {n_train} training queries; "
        f"seeds {args.seeds}; 1 torch thread"
    )
    rows = [(_record("raw", retrieval_eval(test_q, docs, relevant)), "-")]
    rows += _label_free_rows(data, test_q, docs, relevant, args.seeds[0])
    for k in args.ks:
        rows += _k_rows(args, data, k)
    _print_table(rows)


if __name__ == "__main__":
    main()
