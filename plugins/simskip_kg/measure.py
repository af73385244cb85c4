"""Measure what refinement does to PyKEEN models: ``python -m simskip_kg.measure``.

For each dataset, model and seed: train the base model (cached), then evaluate on the test triples
(filtered MRR, Hits@10) the raw entities, the raw entities with a relation re-fit (the fair control),
SimSkip-refined entities (NT-Xent; and the multi-similarity loss with KG neighbourhoods), each with
and without a relation re-fit, and the label-free baselines (centring + L2, whitening,
all-but-the-top) written back. Prints a markdown table of mean ± std over seeds, each difference with
a 95 % paired bootstrap interval over test triples (per-triple values averaged over seeds), and the
time of every step. Small by design: Nations and Kinships, TransE and DistMult, three seeds.

Example::

    PYSTOW_HOME=/tmp/pystow python -m simskip_kg.measure --datasets nations kinships --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["main", "measure"]

VARIANTS = (
    ("raw", None),
    ("raw + refit", "raw"),
    ("simskip-ntxent", "raw"),
    ("simskip-ntxent + refit", "raw + refit"),
    ("simskip-multisim-kg", "raw"),
    ("simskip-multisim-kg + refit", "raw + refit"),
    ("centerl2", "raw"),
    ("whitening", "raw"),
    ("allbutthetop", "raw"),
)


def measure(
    datasets: list[str],
    models: list[str],
    seeds: list[int],
    *,
    cache_dir: Path,
    train_epochs: int = 100,
    simskip_epochs: int = 100,
    refit_epochs: int = 50,
) -> dict[str, Any]:
    """Run the measurement grid; returns per-cell metrics, per-item reciprocal ranks and timings."""
    from simskip_core.api import SimSkip
    from simskip_core.baselines import baseline_resolver
    from simskip_kg.datasets import load_dataset
    from simskip_kg.defaults import DEFAULT_NEIGHBOUR_TOP_K, simskip_batch_size
    from simskip_kg.embeddings import extract_entity_vectors, with_entity_vectors
    from simskip_kg.evaluation import evaluate_link_prediction
    from simskip_kg.pairs import neighbour_pairs
    from simskip_kg.refit import refit_relations
    from simskip_kg.training import ModelSpec, load_or_train

    cells: dict[str, Any] = {}
    for dataset in datasets:
        ds = load_dataset(dataset)
        assert ds.validation is not None  # the shipped datasets have a validation split
        filters = [ds.training.mapped_triples, ds.validation.mapped_triples]
        for model_name in models:
            for seed in seeds:
                timings: dict[str, float] = {}
                spec = ModelSpec(dataset=dataset, model=model_name, epochs=train_epochs, seed=seed)
                model, info = load_or_train(spec, ds.training, cache_dir=cache_dir)
                timings["train_base"] = float(info["train_seconds"])
                tic = time.perf_counter()
                x, _ = extract_entity_vectors(model)
                timings["extract"] = time.perf_counter() - tic
                n = x.shape[0]
                models_by_variant: dict[str, Any] = {"raw": model}
                pairs = {
                    "kg_neighbours": neighbour_pairs(
                        ds.training.mapped_triples, n, top_k=DEFAULT_NEIGHBOUR_TOP_K
                    )
                }
                for name, loss, extra in (
                    ("simskip-ntxent", "ntxent", None),
                    ("simskip-multisim-kg", "multisimilarity", pairs),
                ):
                    tic = time.perf_counter()
                    refiner = SimSkip(
                        loss=loss,
                        epochs=simskip_epochs,
                        batch_size=simskip_batch_size(n),
                        seed=seed,
                        progress=False,
                    ).fit(x, pairs=extra)
                    z = refiner.transform(x)
                    timings[f"fit {name}"] = time.perf_counter() - tic
                    tic = time.perf_counter()
                    models_by_variant[name] = with_entity_vectors(model, z)
                    timings[f"write-back {name}"] = time.perf_counter() - tic
                for name in ("centerl2", "whitening", "allbutthetop"):
                    tic = time.perf_counter()
                    z = baseline_resolver.make(name).fit(x).transform(x)
                    models_by_variant[name] = with_entity_vectors(model, z)
                    timings[f"fit+write-back {name}"] = time.perf_counter() - tic
                for base in ("raw", "simskip-ntxent", "simskip-multisim-kg"):
                    result = refit_relations(
                        models_by_variant[base], ds.training, epochs=refit_epochs, seed=seed
                    )
                    models_by_variant[f"{base} + refit"] = result.model
                    timings[f"refit {base}"] = result.seconds
                evaluations = {}
                for name, variant_model in models_by_variant.items():
                    tic = time.perf_counter()
                    evaluations[name] = evaluate_link_prediction(
                        variant_model, ds.testing.mapped_triples, filter_triples=filters
                    )
                    timings[f"evaluate {name}"] = time.perf_counter() - tic
                key = f"{dataset}/{model_name}/{seed}"
                cells[key] = {
                    "metrics": {k: v.metrics for k, v in evaluations.items()},
                    "rr": {k: v.items["mrr"].values.tolist() for k, v in evaluations.items()},
                    "hits10": {k: v.items["hits@10"].values.tolist() for k, v in evaluations.items()},
                    "timings": timings,
                }
                print(
                    f"done {key}: "
                    + ", ".join(f"{k}={v.metrics['mrr']:.3f}" for k, v in evaluations.items()),
                    flush=True,
                )
    return cells


def _bootstrap(diff: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(n_boot, len(diff)))
    low, high = np.quantile(diff[idx].mean(axis=1), [0.025, 0.975])
    return float(low), float(high)


def table(cells: dict[str, Any]) -> str:
    """Markdown: per (dataset, model), each variant's MRR and Hits@10 mean ± std over seeds, its MRR
    difference to its reference with a paired bootstrap interval, and the median time of its steps."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for key, cell in cells.items():
        dataset, model, _seed = key.split("/")
        groups[dataset, model].append(cell)
    lines = []
    for (dataset, model), group in groups.items():
        lines += [
            f"\n### {dataset} / {model} ({len(group)} seeds)\n",
            "| variant | MRR | Hits@10 | ΔMRR vs reference [95% CI] | reference |",
            "|---|---|---|---|---|",
        ]
        for name, ref in VARIANTS:
            mrr = np.array([c["metrics"][name]["mrr"] for c in group])
            h10 = np.array([c["metrics"][name]["hits@10"] for c in group])
            delta = ""
            if ref is not None:
                diff = np.mean([np.array(c["rr"][name]) - np.array(c["rr"][ref]) for c in group], axis=0)
                low, high = _bootstrap(diff)
                mark = " **(better)**" if low > 0 else " **(worse)**" if high < 0 else ""
                delta = f"{diff.mean():+.4f} [{low:+.4f}, {high:+.4f}]{mark}"
            lines.append(
                f"| {name} | {mrr.mean():.4f} ± {mrr.std():.4f} | {h10.mean():.4f} ± {h10.std():.4f} | {delta} | {ref or ''} |"
            )
        steps = sorted(group[0]["timings"])
        lines.append(
            "\nmedian step times (s): "
            + ", ".join(f"{s} {np.median([c['timings'][s] for c in group]):.2f}" for s in steps)
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line entry: run the grid, write JSON next to a markdown table, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["nations", "kinships"])
    parser.add_argument("--models", nargs="+", default=["transe", "distmult"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--cache-dir", type=Path, default=Path("~/.cache/simskip").expanduser())
    parser.add_argument("--out", type=Path, default=Path("kg-measure.json"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-epochs", type=int, default=100)
    parser.add_argument("--simskip-epochs", type=int, default=100)
    parser.add_argument("--refit-epochs", type=int, default=50)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cells = measure(
        args.datasets,
        args.models,
        args.seeds,
        cache_dir=args.cache_dir,
        train_epochs=args.train_epochs,
        simskip_epochs=args.simskip_epochs,
        refit_epochs=args.refit_epochs,
    )
    args.out.write_text(json.dumps(cells), encoding="utf-8")
    text = table(cells)
    args.out.with_suffix(".md").write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
