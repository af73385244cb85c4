"""The k-curve of query adapters on text/debian_retrieval: nDCG@10 with k labelled (query, document) pairs.

Rows, all on the same split and pairs: raw embeddings; the linear query adapter (MultipleNegativesRanking
loss, the LlamaIndex / Chroma recipe); the SimSkip query adapter (in-batch + mined negatives); the
symmetric SimSkip stage trained with the same pairs as positive pairs (applied to queries and
documents); and the label-free rows (SimSkip NT-Xent, centring + L2, whitening) fitted on the training
queries and the corpus. Intervals: the suite's paired bootstrap over test queries, against raw.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/retrieval_k_curve.py --ks 100 1000

The task's quick version is used (2,000 documents, 500 test queries, up to 1,000 training queries);
its embeddings come from the suite's cache (``$SIMSKIP_CACHE_DIR``), encoded once.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from simskip_text.adapter import fit_linear_adapter, fit_query_adapter
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
    return MethodRecord(name, "row", False, metrics={None: result.metrics}, items={None: result.items})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = next(t for t in text_tasks() if t.name == "text/debian_retrieval")
    data = task.load(LoadOptions(quick=True, progress=False))
    n_train, n_test = data.context["n_train_queries"], data.context["n_test_queries"]
    train_q, docs = data.train.vectors[:n_train], data.train.vectors[n_train:]
    test_q = data.test.vectors[:n_test]
    relevant, train_relevant = data.context["test_relevant"], data.context["train_relevant"]
    print(f"corpus {len(docs)} documents, {n_test} test queries, {n_train} training queries; 1 torch thread")

    records = [_record("raw", retrieval_eval(test_q, docs, relevant))]
    rows: list[tuple[str, str]] = [("raw", "-")]
    for name in ("centerl2", "whitening"):
        fitted = baseline_resolver.make(name).fit(data.train.vectors)
        records.append(
            _record(name, retrieval_eval(fitted.transform(test_q), fitted.transform(docs), relevant))
        )
        rows.append((name, "label-free"))
    tic = time.perf_counter()
    free = SimSkip(**TEXT_DEFAULTS, seed=args.seed).fit(data.train.vectors)
    records.append(
        _record("simskip-ntxent", retrieval_eval(free.transform(test_q), free.transform(docs), relevant))
    )
    rows.append(("simskip-ntxent", f"label-free ({time.perf_counter() - tic:.0f}s)"))
    for k in args.ks:
        rng = np.random.default_rng([args.seed, k])
        chosen = np.sort(rng.choice(n_train, size=min(k, n_train), replace=False))
        q, rel = train_q[chosen], [train_relevant[i] for i in chosen]
        tic = time.perf_counter()
        adapter = fit_query_adapter(q, docs, rel, epochs=args.epochs, seed=args.seed)
        records.append(_record(f"simskip-query@{k}", retrieval_eval(_apply(adapter, test_q), docs, relevant)))
        rows.append((f"simskip-query@{k}", f"{time.perf_counter() - tic:.0f}s"))
        tic = time.perf_counter()
        linear = fit_linear_adapter(q, docs, rel, epochs=args.epochs, seed=args.seed)
        adapted = _apply(linear, test_q)
        records.append(_record(f"linear-query@{k}", retrieval_eval(adapted, docs, relevant)))
        rows.append((f"linear-query@{k}", f"{time.perf_counter() - tic:.0f}s"))
        pairs = np.array(
            [(i, n_train + int(d)) for i, docs_i in zip(chosen, rel) for d in docs_i], dtype=np.int64
        )
        tic = time.perf_counter()
        sym = SimSkip(**TEXT_DEFAULTS, seed=args.seed).fit(data.train.vectors, pairs={"qrels": pairs})
        result = retrieval_eval(sym.transform(test_q), sym.transform(docs), relevant)
        records.append(_record(f"simskip-symmetric@{k}", result))
        rows.append((f"simskip-symmetric@{k}", f"{time.perf_counter() - tic:.0f}s"))

    boot = PairedBootstrap(n_boot=2000, seed=0)
    by_name = {r.name: r for r in records}
    print(
        "| row | nDCG@10 | MRR@10 | Recall@100 | vs raw: nDCG@10 diff [95% CI], p | vs linear (same k) | fit |"
    )
    print("|---|---|---|---|---|---|---|")
    for (name, note), record in zip(rows, records):
        m = record.metrics[None]
        vs_raw = vs_linear = "-"
        if name != "raw":
            c = boot.compare(record, by_name["raw"], "ndcg@10")
            vs_raw = f"{c.diff:+.4f} [{c.ci_low:+.4f}, {c.ci_high:+.4f}], p={c.p_value:.3f}"
        if name.startswith("simskip-query@"):
            c = boot.compare(record, by_name["linear-query@" + name.split("@")[1]], "ndcg@10")
            vs_linear = f"{c.diff:+.4f} [{c.ci_low:+.4f}, {c.ci_high:+.4f}], p={c.p_value:.3f}"
        print(
            f"| {name} | {m['ndcg@10']:.4f} | {m['mrr@10']:.4f} | {m['recall@100']:.4f} | {vs_raw} | {vs_linear} | {note} |"
        )


if __name__ == "__main__":
    main()
