"""The cell store: one atomically written file per finished (task, method, seed) cell."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simskip_core.bench.config import DET, BenchConfig
from simskip_core.tasks import ItemScores, Method, Task


def slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "__" for c in name)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(
        json.dumps(obj, indent=1, sort_keys=True, default=json_default, allow_nan=True), encoding="utf-8"
    )
    os.replace(tmp, path)


def write_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` (.npz) through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]
    os.replace(tmp, path)


def json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 64 else f"<array {value.shape} {value.dtype}>"
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=json_default))


class CellStore:
    """Per-cell result files of one run folder."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def path(self, task: str, method: str, seed: int | None) -> Path:
        """JSON file of a cell."""
        key = DET if seed is None else f"seed-{seed}"
        return self.out / "cells" / slug(task) / slug(method) / f"{key}.json"

    def read(self, task: str, method: str, seed: int | None) -> dict[str, Any] | None:
        """The stored cell, or None when absent or unreadable."""
        path = self.path(task, method, seed)
        if not path.is_file():
            return None
        try:
            doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            return doc
        except (OSError, ValueError):
            return None

    def write(self, doc: dict[str, Any], items: dict[str, ItemScores]) -> None:
        """Write a cell: the per-item scores first, then the JSON (whose presence marks the cell done)."""
        path = self.path(doc["task"], doc["method"], doc["seed"])
        index = {}
        arrays = {}
        for i, (metric, scores) in enumerate(sorted(items.items())):
            arrays[f"i{i}"] = np.asarray(scores.values, dtype=np.float64)
            index[metric] = {"kind": scores.kind, "key": f"i{i}"}
        doc = dict(doc, items=index)
        if arrays:
            write_npz_atomic(path.with_suffix(".npz"), arrays)
        write_json_atomic(path, doc)

    def items(self, doc: dict[str, Any]) -> dict[str, ItemScores]:
        """The per-item scores of a stored cell."""
        index = doc.get("items") or {}
        if not index:
            return {}
        path = self.path(doc["task"], doc["method"], doc["seed"]).with_suffix(".npz")
        with np.load(path, allow_pickle=False) as stored:
            return {metric: ItemScores(spec["kind"], stored[spec["key"]]) for metric, spec in index.items()}


# ============================================================================ measurement
def config_key(task: Task, method: Method, config: BenchConfig) -> str:
    parts = {
        "defaults": dict(task.defaults),
        "quick": config.quick,
        "shots": config.shots if method.uses_labels else None,
        "method": method.name,
        "family": method.family,
        "source": task.source,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def task_cells(methods: Sequence[Method], seeds: Sequence[int]) -> list[tuple[Method, int | None]]:
    """(method, seed) pairs of one task in run order: seed by seed; deterministic methods once, first."""
    cells: list[tuple[Method, int | None]] = []
    for i, seed in enumerate(seeds):
        for method in methods:
            if not method.stochastic:
                if i == 0:
                    cells.append((method, None))
            else:
                cells.append((method, seed))
    return cells


def is_done(doc: dict[str, Any] | None, key: str) -> bool:
    return doc is not None and doc.get("status") in ("ok", "n/a") and doc.get("config_key") == key
