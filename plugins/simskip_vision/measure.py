"""Measure the vision tasks: extraction throughput, fit time, and identity / baselines / SimSkip accuracy.

Run (writes a JSON report and prints a markdown table)::

    python -m simskip_vision.measure --quick --seeds 0 1 2 --cache-dir ~/.cache/simskip --out vision-quick.json

Extraction throughput is timed when the features are not in the cache yet (an empty ``--cache-dir``
or ``--no-cache``); the rate includes loading the dataset and the backbone, so it slightly
understates the model's own rate. With cached features the report says so instead of giving a rate. Every method is fitted on the training
features only; accuracy is the tasks' own evaluation (CV-tuned logistic probe, 5-NN) on the fixed test split.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simskip_core.api import SimSkip
from simskip_core.baselines import baseline_resolver
from simskip_core.plugins import all_tasks
from simskip_core.tasks import LoadOptions
from simskip_vision.extract import CACHE_NAMESPACE

__all__ = ["main", "measure_task"]

BASELINES = ("centerl2", "whitening", "allbutthetop")


def _methods(
    simskip_kwargs: dict[str, Any], variants: Mapping[str, Mapping[str, Any]], baselines: bool
) -> dict[str, Any]:
    methods: dict[str, Any] = {"identity": None}
    if baselines:
        for name in BASELINES:
            methods[name] = name
    methods["simskip-ntxent"] = simskip_kwargs
    for name, extra in variants.items():
        methods[name] = {**simskip_kwargs, **extra}
    return methods


def measure_task(
    name: str,
    *,
    quick: bool,
    seeds: Sequence[int],
    cache_dir: Path,
    use_cache: bool,
    progress: bool,
    epochs: int | None,
    variants: Mapping[str, Mapping[str, Any]] | None = None,
    baselines: bool = True,
) -> dict[str, Any]:
    """Load task ``name`` (timing extraction), then score every method for every seed.

    ``variants`` adds SimSkip rows: name -> keyword arguments on top of the task's defaults.
    """
    task = all_tasks()[name]
    folder = Path(cache_dir).expanduser() / CACHE_NAMESPACE
    before = set(folder.glob("*.npz")) if folder.is_dir() else set()
    tic = time.perf_counter()
    data = task.load(LoadOptions(quick=quick, cache_dir=cache_dir, use_cache=use_cache, progress=progress))
    load_seconds = time.perf_counter() - tic
    extracted = (
        not use_cache or len(set(folder.glob("*.npz")) - before) == 2
    )  # train and test were both misses
    n_images = len(data.train) + len(data.test)
    kwargs = dict(task.defaults)
    if epochs is not None:
        kwargs["epochs"] = epochs
    rows: dict[str, dict[str, list[float]]] = {}
    fit_seconds: dict[str, list[float]] = {}
    x_train, x_test = data.train.vectors, data.test.vectors
    for method, spec in _methods(kwargs, variants or {}, baselines).items():
        seeds_here = seeds if method.startswith("simskip") else seeds[:1]  # baselines are deterministic
        for seed in seeds_here:
            tic = time.perf_counter()
            if spec is None:
                z_train, z_test = x_train, x_test
            elif isinstance(spec, str):
                fitted = baseline_resolver.make(spec).fit(x_train)
                z_train, z_test = fitted.transform(x_train), fitted.transform(x_test)
            else:
                model = SimSkip(**spec, seed=seed, progress=progress).fit(x_train)
                z_train, z_test = model.transform(x_train), model.transform(x_test)
            fit_seconds.setdefault(method, []).append(time.perf_counter() - tic)
            assert task.evaluate is not None
            scores = task.evaluate(data, z_train, z_test, seed, {})
            for metric, value in scores.metrics.items():
                rows.setdefault(method, {}).setdefault(metric, []).append(value)
    return {
        "task": name,
        "quick": quick,
        "n_train": len(data.train),
        "n_test": len(data.test),
        "load_seconds": load_seconds,
        "images_per_second": n_images / load_seconds if extracted else None,
        "simskip_kwargs": kwargs,
        "seeds": list(seeds),
        "metrics": rows,
        "fit_seconds": fit_seconds,
    }


def _table(report: dict[str, Any]) -> str:
    lines = [
        f"### {report['task']} ({report['n_train']} train / {report['n_test']} test)",
        "",
        "| method | probe_acc | knn5_acc | fit s |",
        "|---|---|---|---|",
    ]
    for method, metrics in report["metrics"].items():
        cells = []
        for metric in ("probe_acc", "knn5_acc"):
            values = np.asarray(metrics[metric])
            cells.append(f"{values.mean():.4f} ± {values.std():.4f} (n={len(values)})")
        fit = np.mean(report["fit_seconds"][method])
        lines.append(f"| {method} | {cells[0]} | {cells[1]} | {fit:.1f} |")
    rate = report["images_per_second"]
    lines.append("")
    lines.append(
        f"extraction: {rate:.1f} images/s ({report['load_seconds']:.0f} s)"
        if rate
        else "extraction: cached features"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="*", default=None, help="task names (default: every vision task)")
    parser.add_argument("--quick", action="store_true", help="the quick subsets")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="override the tasks' SimSkip epochs")
    parser.add_argument("--cache-dir", type=Path, default=Path("~/.cache/simskip").expanduser())
    parser.add_argument("--no-cache", action="store_true", help="re-extract features (times extraction)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar='NAME={"hidden_dim": 512}',
        help="an extra SimSkip row: a name and JSON keyword arguments on top of the task defaults (repeatable)",
    )
    parser.add_argument("--no-baselines", action="store_true", help="skip the label-free baselines")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = {}
    for item in args.variant:
        name, sep, spec = item.partition("=")
        if not sep:
            parser.error(f"--variant must be NAME=JSON, got {item!r}")
        variants[name] = json.loads(spec)
    names = args.tasks or [n for n, t in all_tasks().items() if t.domain == "vision"]
    reports = []
    for name in names:
        report = measure_task(
            name,
            quick=args.quick,
            seeds=args.seeds,
            cache_dir=args.cache_dir,
            use_cache=not args.no_cache,
            progress=args.progress,
            epochs=args.epochs,
            variants=variants,
            baselines=not args.no_baselines,
        )
        reports.append(report)
        print(_table(report), flush=True)
    info = {"torch_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine()}
    if args.out:
        args.out.write_text(json.dumps({"info": info, "reports": reports}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
