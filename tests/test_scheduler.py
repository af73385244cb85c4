"""The suite's (task, seed) scheduler: the same cells and report for any worker count, data loaded
once per worker, largest units first."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from test_bench_runner import SyntheticPlugin, _config, plugin  # noqa: F401

from simskip_core.bench import run_bench
from simskip_core.bench.config import select_methods, select_tasks
from simskip_core.bench.suite import Schedule
from simskip_core.plugins import all_tasks

#: Columns of results.csv that measure time or memory (they differ from run to run).
_MEASURED = ("fit_seconds", "apply_items_per_second", "peak_rss_increase_mb")
_TASKS = ("synthetic/blobs", "synthetic/words")


def _cells(result: Any) -> dict[tuple[str, str, Any], tuple[str, dict[str, float], dict[str, Any]]]:
    return {
        (c["task"], c["method"], c["seed"]): (
            c["status"],
            c["metrics"],
            {k: v for k, v in c["info"].items() if k != "apply_seconds"},  # a measured time
        )
        for c in result.run["cells"]
    }


def _tables(markdown: str) -> list[str]:
    """The report without what measures time: the machine line, the timings section and the
    columns from "fit s" on."""
    lines: list[str] = []
    cut: int | None = None
    skipping = False
    for line in markdown.splitlines():
        if line.startswith("## "):
            skipping = line == "## Timings"
        if skipping or line.startswith("- machine:"):
            continue
        if line.startswith("|"):
            cells = line.split("|")
            if "fit s" in [c.strip() for c in cells]:
                cut = [c.strip() for c in cells].index("fit s")
            line = "|".join(cells[:cut]) if cut is not None else line
        else:
            cut = None
        lines.append(line)
    return lines


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return [{k: v for k, v in row.items() if k not in _MEASURED} for row in csv.DictReader(handle)]


def test_one_and_two_workers_give_the_same_cells_and_report(
    plugin: SyntheticPlugin,  # noqa: F811
    tmp_path: Path,
) -> None:
    seeds = (0, 1, 2)
    one = run_bench(_config(tmp_path, out=tmp_path / "one", seeds=seeds, jobs=1, plots=False))
    two = run_bench(_config(tmp_path, out=tmp_path / "two", seeds=seeds, jobs=2, plots=False))
    assert one.failures == two.failures == 0
    assert two.run["environment"]["bench_jobs"] == 2
    cells_one, cells_two = _cells(one), _cells(two)
    assert {status for status, _, _ in cells_one.values()} == {"ok"} and len(cells_one) > 40
    assert cells_two == cells_one  # bit for bit: metrics and info (mean shifts, chosen maps)
    assert _tables(two.markdown) == _tables(one.markdown)
    assert _csv(tmp_path / "two" / "results.csv") == _csv(tmp_path / "one" / "results.csv")
    # data loaded once per worker that ran any of the task's units
    assert plugin.loads["synthetic/blobs"] == 1 and plugin.loads["synthetic/words"] == 1  # jobs=1
    loads = {s["task"]: s.get("loads") for s in two.run["tasks"]}
    assert loads["synthetic/blobs"] in (1, 2) and loads["synthetic/words"] in (1, 2)
    stored = json.loads((tmp_path / "two" / "tasks" / "synthetic__blobs.json").read_text())
    assert stored["loads"] == loads["synthetic/blobs"]


def _schedule(tmp_path: Path, seeds: tuple[int, ...]) -> Schedule:
    config = _config(tmp_path, seeds=seeds, tasks=_TASKS, methods=("simskip-ntxent",), plots=False)
    tasks = select_tasks(all_tasks(), config)
    return Schedule(config, tasks, select_methods(tasks, config))


def _set_cpu(out: Path, task: str, seconds: float) -> None:
    for path in (out / "cells" / task.replace("/", "__")).rglob("*.json"):
        doc = json.loads(path.read_text())
        doc["timings"]["run_cpu_seconds"], doc["timings"]["eval_cpu_seconds"] = seconds, 0.0
        path.write_text(json.dumps(doc))


@pytest.mark.parametrize("heavy", ["synthetic/words", "synthetic/blobs"])
def test_units_go_largest_first_by_the_stored_cpu_time(
    plugin: SyntheticPlugin,  # noqa: F811
    tmp_path: Path,
    heavy: str,
) -> None:
    config = _config(tmp_path, seeds=(0,), tasks=_TASKS, methods=("simskip-ntxent",), plots=False)
    run_bench(config)
    _set_cpu(config.out, heavy, 100.0)
    light = next(n for n in ("synthetic/words", "synthetic/blobs") if n != heavy)
    _set_cpu(config.out, light, 1.0)
    schedule = _schedule(tmp_path, (0, 1, 2))  # seed 0 is done: units of seeds 1 and 2 remain
    assert schedule.estimate(next(u for u in schedule.pending if u.task.name == heavy)) == pytest.approx(
        100.0
    )
    order = []
    while (unit := schedule.next(set())) is not None:
        order.append((unit.task.name, unit.seed))
    assert order == [(heavy, 1), (heavy, 2), (light, 1), (light, 2)]


def test_a_task_without_timings_is_measured_first_then_waits(
    plugin: SyntheticPlugin,  # noqa: F811
    tmp_path: Path,
) -> None:
    schedule = _schedule(tmp_path, (0, 1))  # nothing ran yet: no costs known
    first = schedule.next(set())
    second = schedule.next(set())
    assert first is not None and second is not None
    # the first unit of each task measures it; the other units wait until a cost is known
    assert [(first.task.name, first.seed), (second.task.name, second.seed)] == [
        ("synthetic/blobs", 0),
        ("synthetic/words", 0),
    ]
    assert schedule.estimate(schedule.pending[0]) is None
