"""Summarise ``simskip bench`` runs of the graph tasks as the markdown table of ``docs/graph.md``.

Usage (the measurement behind docs/graph.md)::

    simskip bench --suite full --domain graph --seeds 0-2 --no-plots --quiet --out runs/graph \\
        --method identity,centerl2,whitening,allbutthetop,neighbour-average,sgc-propagation,spectral,\\
simskip-ntxent,simskip-multisimilarity,simskip-structure
    python -m simskip_graph.measure runs/graph

Per task and method: probe accuracy and 5-NN accuracy as mean +- std over the seeds (deterministic
methods have one value), fit seconds, and for trained refiners milliseconds per optimisation step
(fit time / (epochs run x batches per epoch); it includes the per-epoch validation pass).
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

__all__ = ["main", "summarise"]

ORDER = (
    "identity",
    "centerl2",
    "whitening",
    "allbutthetop",
    "neighbour-average",
    "sgc-propagation",
    "spectral",
    "simskip-ntxent",
    "simskip-multisimilarity",
    "simskip-structure",
)


def _steps_per_epoch(n: int, batch: int | None) -> int:
    rows = n - round(0.1 * n)
    return max(1, math.ceil(rows / (batch or 256)))


def summarise(run_dirs: list[Path]) -> str:
    """Markdown table of every graph cell found under ``run_dirs`` (folders written by ``simskip bench``)."""
    cells: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for run in run_dirs:
        for path in sorted(Path(run).glob("cells/graph__*/*/*.json")):
            doc = json.loads(path.read_text())
            if doc.get("status") == "ok":
                cells[(doc["task"], doc["method"])].append(doc)
    lines = [
        "| task | method | probe acc | 5-NN acc | fit s | ms/step |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    tasks = sorted({task for task, _ in cells})
    for task in tasks:
        for method in ORDER:
            docs = cells.get((task, method))
            if not docs:
                continue
            acc = np.array([d["metrics"]["probe_acc"] for d in docs])
            knn = np.array([d["metrics"]["knn5_acc"] for d in docs])
            fit = np.mean([d["timings"]["fit_seconds"] for d in docs])
            epochs = [d.get("info", {}).get("epochs_run") for d in docs]
            step = "-"
            if all(epochs):
                n = docs[0]["n_train"]
                batch = min(256, n - round(0.1 * n))
                steps = np.mean(epochs) * _steps_per_epoch(n, batch)
                step = f"{1000 * fit / steps:.0f}"

            def fmt(a: np.ndarray) -> str:
                return f"{a.mean():.3f}" if len(a) == 1 else f"{a.mean():.3f} ± {a.std(ddof=1):.3f}"

            lines.append(f"| {task} | {method} | {fmt(acc)} | {fmt(knn)} | {fit:.2f} | {step} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Print the summary table of the given ``simskip bench`` output folders."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="output folders of simskip bench")
    args = parser.parse_args(argv)
    print(summarise(args.runs))


if __name__ == "__main__":
    main()
