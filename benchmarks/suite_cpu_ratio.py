"""CPU time of the same cells in an earlier full-suite run and in a new one: the issue-19 ratio.

The earlier run is read from a git revision of ``docs/results.md`` (its "Timings" table: CPU seconds
of each task's methods and evaluation, summed over its cells) and ``docs/results-full.csv`` (which
methods each task had), with each task's seeds from its table header. The new run is a
``simskip bench`` folder; for each task only the cells the earlier run had are summed: the same
methods, the same seeds, deterministic methods once. Tasks the new run has not finished for those
cells are listed and left out of the total.

    .venv/bin/python benchmarks/suite_cpu_ratio.py --run bench-results/full10 --rev 19ad2c1

``--against OLD_DIR`` compares two run folders instead, over the cells both hold with status ok (the
fair check: the same cells run by two versions of the code side by side, one core each):

    .venv/bin/python benchmarks/suite_cpu_ratio.py --run /tmp/cmp-new --against /tmp/cmp-old

Task loads (encoding, feature extraction, base-encoder training) are not counted on either side:
the earlier table's load column was the cached reload of a resumed session.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import subprocess
from pathlib import Path


def _git_show(rev: str, path: str) -> str:
    return subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True, check=True).stdout


def _seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        seeds.extend(range(int(lo), int(hi or lo) + 1))
    return seeds


def old_run(rev: str) -> tuple[dict[str, float], dict[str, list[int]], dict[str, set[str]]]:
    """Per task: CPU seconds of methods + evaluation, seeds, and methods, of the report at ``rev``."""
    report = _git_show(rev, "docs/results.md")
    cpu: dict[str, float] = {}
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[1] == "ok" and "/" in cells[4]:
            cpu[cells[0]] = float(cells[4].split("/")[1]) + float(cells[5].split("/")[1])
    seeds: dict[str, list[int]] = {}
    for match in re.finditer(r"^#### (\S+)\n\n[^\n]*?; seeds ([0-9,\-]+);", report, re.MULTILINE):
        seeds.setdefault(match.group(1), _seeds(match.group(2)))
    methods: dict[str, set[str]] = {}
    for row in csv.DictReader(io.StringIO(_git_show(rev, "docs/results-full.csv"))):
        methods.setdefault(row["task"], set()).add(row["method"])
    return cpu, seeds, methods


def cell_cpu(run: Path) -> dict[tuple[str, str, str], float | None]:
    """CPU seconds (fit, apply, evaluation) of every cell of ``run``, keyed by (task, method, file stem:
    ``det`` or ``seed-<s>``); None for a cell that did not finish ok (a method not applicable to the task
    costs nothing in either run)."""
    cells: dict[tuple[str, str, str], float | None] = {}
    for path in sorted((run / "cells").glob("*/*/*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        timings = doc.get("timings", {})
        cpu = float(timings.get("run_cpu_seconds") or 0) + float(timings.get("eval_cpu_seconds") or 0)
        cells[(doc["task"], doc["method"], path.stem)] = cpu if doc.get("status") == "ok" else None
    return cells


def new_cpu(
    cells: dict[tuple[str, str, str], float | None], task: str, methods: set[str], seeds: list[int]
) -> tuple[float, int]:
    """CPU seconds of ``task``'s cells for ``methods`` x ``seeds`` (a deterministic method once); (seconds,
    cells missing)."""
    total, missing = 0.0, 0
    for method in sorted(methods):
        det = (task, method, "det")
        keys = [det] if det in cells else [(task, method, f"seed-{s}") for s in seeds]
        for key in keys:
            if key not in cells:
                missing += 1
            total += cells.get(key) or 0.0
    return total, missing


def compare_runs(new: Path, old: Path) -> None:
    """Print, per task, the CPU time of the cells both runs finished, and the total ratio."""
    a, b = cell_cpu(new), cell_cpu(old)
    common = sorted(k for k in set(a) & set(b) if a[k] is not None and b[k] is not None)
    print(f"earlier run: {old}; new run: {new}; {len(common)} cells in both")
    print("| task | cells | earlier CPU s | new CPU s | earlier / new |")
    print("|---|---|---|---|---|")
    for task in sorted({key[0] for key in common}):
        keys = [key for key in common if key[0] == task]
        old_s, new_s = sum(b[k] or 0.0 for k in keys), sum(a[k] or 0.0 for k in keys)
        print(f"| {task} | {len(keys)} | {old_s:.0f} | {new_s:.0f} | {old_s / new_s:.2f}x |")
    old_total, new_total = sum(b[k] or 0.0 for k in common), sum(a[k] or 0.0 for k in common)
    print(
        f"| **total** | {len(common)} | {old_total:.0f} | {new_total:.0f} | **{old_total / new_total:.2f}x** |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="the new simskip bench folder")
    parser.add_argument("--rev", default="19ad2c1", help="git revision whose docs/ hold the earlier run")
    parser.add_argument("--against", type=Path, help="an earlier run folder to compare cell by cell")
    args = parser.parse_args()
    if args.against is not None:
        compare_runs(args.run, args.against)
        return
    cpu, seeds, methods = old_run(args.rev)
    print(f"earlier run: docs/results.md at {args.rev}; new run: {args.run}")
    print("| task | seeds | earlier CPU s | new CPU s (same cells) | earlier / new |")
    print("|---|---|---|---|---|")
    old_total = new_total = 0.0
    unfinished = []
    cells = cell_cpu(args.run)
    for task in sorted(cpu):
        new, missing = new_cpu(cells, task, methods[task], seeds[task])
        if missing:
            unfinished.append(f"{task} ({missing} cells missing)")
            continue
        old_total, new_total = old_total + cpu[task], new_total + new
        span = f"{min(seeds[task])}-{max(seeds[task])}"
        print(f"| {task} | {span} | {cpu[task]:.0f} | {new:.0f} | {cpu[task] / new:.2f}x |")
    if new_total:
        print(f"| **total** | | {old_total:.0f} | {new_total:.0f} | **{old_total / new_total:.2f}x** |")
    if unfinished:
        print("not yet in the new run: " + ", ".join(unfinished))


if __name__ == "__main__":
    main()
