"""Auto mode's cost (issue 15): ``SimSkip(mode="auto").fit(X, labels=y)`` against ``SimSkip().fit(X, labels=y)``.

Same data, same epochs, same seed, one torch thread, in one process: for every size in ``--sizes``
(rows x ``--dim``) and every epoch count in ``--epochs`` it times

* ``refine+labels``: ``SimSkip(epochs=E).fit(X, labels=y)`` (the reference the issue names);
* ``refine``: ``SimSkip(epochs=E).fit(X)`` (label-free: what auto mode trains, since with ``labels=``
  and no probe its labels serve the probe only);
* ``auto``: ``SimSkip(epochs=E, mode="auto").fit(X, labels=y)``, with its selection time apart
  (fit time minus the training epochs' time);

and prints the ratios auto / refine+labels and auto / refine. X is a seeded mixture of 10 Gaussian
classes (``--labelled`` share of rows labelled, the rest -1). One small fit of each kind runs first
(one-time imports are not timed).

    python benchmarks/bench_auto_cost.py --sizes 20000,50000,200000 --epochs 3,10
    python benchmarks/bench_auto_cost.py --sizes 2000 --dim 32 --epochs 1          # smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simskip_core import SimSkip

CLASSES = 10


def make_data(rows: int, dim: int, labelled: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded (rows, dim) float32 mixture of 10 Gaussian classes and its labels (-1 beyond the labelled share)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, rows)
    centres = rng.normal(size=(CLASSES, dim)).astype(np.float32)
    x = centres[y] + rng.normal(size=(rows, dim)).astype(np.float32) * 2.0
    labels = np.where(rng.random(rows) < labelled, y, -1)
    return x.astype(np.float32), labels


def _timed_fit(model: SimSkip, x: np.ndarray, **fit_kwargs: Any) -> dict[str, Any]:
    tic = time.perf_counter()
    model.fit(x, **fit_kwargs)
    seconds = time.perf_counter() - tic
    train = float(sum(record.get("seconds", 0.0) for record in model.history_))
    return {
        "seconds": seconds,
        "train_seconds": train,
        "epochs_run": len(model.history_),
        "chosen": model.chosen,
    }


def measure(rows: int, dim: int, epochs: int, labelled: float) -> dict[str, Any]:
    """Time the three fits on one data set; return their seconds and the ratios."""
    x, y = make_data(rows, dim, labelled)
    common = {"epochs": epochs, "seed": 0, "progress": False, "patience": None}
    out: dict[str, Any] = {"rows": rows, "dim": dim, "epochs": epochs, "labelled": labelled}
    out["refine+labels"] = _timed_fit(SimSkip(**common), x, labels=y)
    out["refine"] = _timed_fit(SimSkip(**common), x)
    auto = SimSkip(**common, mode="auto")
    out["auto"] = _timed_fit(auto, x, labels=y)
    assert auto.selection_ is not None
    out["auto"]["rows_scored"] = auto.selection_["rows_scored"]
    out["auto"]["selection_seconds"] = out["auto"]["seconds"] - out["refine"]["seconds"]
    out["ratio_vs_refine_labels"] = out["auto"]["seconds"] / out["refine+labels"]["seconds"]
    out["ratio_vs_refine"] = out["auto"]["seconds"] / out["refine"]["seconds"]
    return out


def warm_up(dim: int) -> None:
    """One small fit of each kind first, so that one-time imports (scikit-learn's probes) are not timed."""
    x, y = make_data(500, dim, 1.0, seed=1)
    SimSkip(epochs=1, progress=False).fit(x, labels=y)
    SimSkip(epochs=1, progress=False, mode="auto").fit(x, labels=y)


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the benchmark; print a markdown table (and write JSON with ``--out``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=_ints, default=[20_000, 50_000, 200_000])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--epochs", type=_ints, default=[3])
    parser.add_argument("--labelled", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warm_up(args.dim)
    results = []
    print(
        "| rows | dim | epochs | refine+labels s | refine s | auto s | selection s | rows scored | auto / refine+labels | auto / refine | chosen |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for rows in args.sizes:
        for epochs in args.epochs:
            r = measure(rows, args.dim, epochs, args.labelled)
            results.append(r)
            print(
                f"| {rows:,} | {args.dim} | {epochs} | {r['refine+labels']['seconds']:.1f} | "
                f"{r['refine']['seconds']:.1f} | {r['auto']['seconds']:.1f} | {r['auto']['selection_seconds']:.1f} | "
                f"{r['auto']['rows_scored']:,} | {r['ratio_vs_refine_labels']:.2f}x | {r['ratio_vs_refine']:.2f}x | "
                f"{r['auto']['chosen']} |",
                flush=True,
            )
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
