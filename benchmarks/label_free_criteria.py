"""Label-free criteria vs downstream metrics on the suite's tasks (issue 16).

For every selected task and seed, every label-free candidate the suite compares (identity, the core
baselines, the SimSkip variants with the task's defaults, the random-residual control, and the
label-free methods plugins add) is fitted on training rows through the bench's own ``Method.run``,
scored downstream on the test split with the suite's evaluator, and scored by every criterion of
:mod:`simskip_core.criteria` on held-out training rows. Reported per task:

* the Spearman rank correlation, across candidates, between each criterion's score (higher = better)
  and the task's primary metric;
* what auto mode would do with that criterion as its probe (keep identity unless the criterion's best
  candidate beats identity), and with the conservative rule (keep identity unless *every* selector
  criterion says the same candidate beats identity): the metric difference vs identity with the
  suite's paired bootstrap over test items, and whether it is significantly worse (p < 0.05, no
  multiplicity correction, so losses are flagged more readily, not less).

Held-out rows. Where the task's training rows are independent items (no pair signals, no plugin
methods: text and vision tasks), a seeded 20% of the training rows (at most 2,000) is held out: the
candidates are fitted on the other 80% and applied to the held-out rows, which only the criteria
see; the downstream evaluation uses the candidate applied to every training row. Graph and KG tasks
are transductive (their methods and pair signals need every node or entity), so there the candidates
are fitted on all rows as in the suite, and the criteria read a seeded sample of rows the candidates
were fitted on; the table marks these tasks.

Views. The core methods are maps, so two augmented views of the held-out *input* rows
(``simskip_core.api.DEFAULT_AUGMENT``) are appended to the test split the method is applied to, and the
view criteria (alignment, view stability, LiDAR) compare the mapped views. A plugin method (graph
propagation, KG relation re-fit) has no map for new rows; its view criteria augment its output
vectors directly.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/label_free_criteria.py --suite quick --out bench-results/label-free
"""

from __future__ import annotations

import argparse
import csv
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from simskip_core import criteria
from simskip_core.api import DEFAULT_AUGMENT
from simskip_core.bench.config import BenchConfig, parse_seeds, select_methods, select_tasks
from simskip_core.bench.methods import NotApplicable, core_methods, task_pairs
from simskip_core.bench.runner import evaluate_output as _evaluate  # the suite's own evaluation
from simskip_core.bench.stats import MethodRecord, PairedBootstrap
from simskip_core.embeddings import EmbeddingSet
from simskip_core.tasks import LoadOptions, Method, MethodOutput, Task, TaskData

log = logging.getLogger("label_free_criteria")

#: Share of training rows held out for the criteria where rows are independent items.
HOLDOUT_FRACTION = 0.2
#: Criteria the conservative rule asks to agree: all but k-NN preservation, which the identity maximises.
SELECTORS = tuple(c.name for c in criteria.CRITERIA if c.name != "knn_preservation")
CONSERVATIVE = "all-agree"
ALPHA = 0.05


@dataclass
class Candidate:
    """One fitted candidate of one (task, seed): its downstream result and criterion values."""

    name: str
    family: str
    path: str  # "map" (views pushed through the map) or "vectors" (views of the output vectors)
    metrics: dict[str, float]
    items: dict[str, Any]
    values: dict[str, float]
    scores: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        self.scores = criteria.criterion_scores(self.values)

    def record(self) -> MethodRecord:
        """The candidate as the suite's statistics see it (one run, stored under the key None)."""
        return MethodRecord(self.name, self.family, False, {None: self.metrics}, {None: self.items})


@dataclass
class Held:
    """The held-out rows of one (task, seed): indices, input vectors and their two augmented views."""

    index: np.ndarray
    fit_index: np.ndarray
    held_out: bool
    inputs: np.ndarray
    view_a: np.ndarray
    view_b: np.ndarray


# ------------------------------------------------------------------------------------------- fitting
def _is_splittable(task: Task, data: TaskData, methods: Sequence[Method]) -> bool:
    core = {m.name for m in core_methods()}
    return not task_pairs(task, data) and all(m.name in core for m in methods)


def _held_rows(task: Task, data: TaskData, methods: Sequence[Method], seed: int, max_rows: int) -> Held:
    n = len(data.train)
    splittable = _is_splittable(task, data, methods)
    if splittable:
        size = min(max_rows, max(2, round(n * HOLDOUT_FRACTION)))
        index = criteria.sample_rows(n, size, seed)
        fit_index = np.setdiff1d(np.arange(n), index)
    else:
        index, fit_index = criteria.sample_rows(n, max_rows, seed), np.arange(n)
    x = data.train.vectors
    view_a, view_b = criteria.make_views(x[index], DEFAULT_AUGMENT, fit_on=x[fit_index], seed=seed)
    return Held(index, fit_index, splittable, x[index].astype(np.float64), view_a, view_b)


def _run_map(
    method: Method, task: Task, data: TaskData, held: Held, seed: int, state: dict[str, Any]
) -> tuple[MethodOutput, np.ndarray, np.ndarray, np.ndarray]:
    """Fit a core method on the fit rows and apply it to test + held-out rows + their two views."""
    h, n_test = len(held.index), len(data.test)
    extended = np.concatenate([data.test.vectors, held.inputs, held.view_a, held.view_b]).astype(np.float32)
    train = data.train.subset(held.fit_index) if held.held_out else data.train
    out = method.run(task, TaskData(train, EmbeddingSet(extended), data.context), seed, state)
    blocks = [out.test[n_test + i * h : n_test + (i + 1) * h] for i in range(3)]
    full_train = out.train
    if held.held_out:
        full_train = np.empty((len(data.train), out.train.shape[1]), dtype=out.train.dtype)
        full_train[held.fit_index] = out.train
        full_train[held.index] = blocks[0]
    result = MethodOutput(full_train, out.test[:n_test], out.fit_seconds, out.info, out.extras)
    return result, blocks[0], blocks[1], blocks[2]


def _candidate(
    method: Method, task: Task, data: TaskData, held: Held, seed: int, state: dict[str, Any], k: int
) -> Candidate:
    core = {m.name for m in core_methods()}
    if method.name in core:
        out, z, view_a, view_b = _run_map(method, task, data, held, seed, state)
        values = criteria.compute_criteria(
            z, inputs=held.inputs, view_a=view_a, view_b=view_b, k=k, seed=seed
        )
        path = "map"
    else:
        out = method.run(task, data, seed, state)
        values = criteria.vector_criteria(
            out.train[held.index], DEFAULT_AUGMENT, inputs=held.inputs, k=k, seed=seed
        )
        path = "vectors"
    state[method.name] = out.info
    result = _evaluate(task, data, out, seed)
    return Candidate(method.name, method.family, path, dict(result.metrics), dict(result.items), values)


def fit_candidates(
    task: Task, data: TaskData, methods: Sequence[Method], seed: int, *, k: int, max_rows: int
) -> tuple[list[Candidate], Held, list[str]]:
    """Every label-free candidate of ``task`` fitted with ``seed``; also the held rows and skip notes."""
    held = _held_rows(task, data, methods, seed, max_rows)
    k = min(k, max(1, len(held.index) // 3))  # a bootstrap resample keeps about 63% of the rows
    state: dict[str, Any] = {}
    found, notes = [], []
    for method in methods:
        try:
            found.append(_candidate(method, task, data, held, seed, state, k))
        except NotApplicable as reason:
            notes.append(f"{method.name}: n/a ({reason})")
        except Exception as error:  # one failing candidate must not stop the measurement
            log.exception("%s · %s failed", task.name, method.name)
            notes.append(f"{method.name}: failed ({type(error).__name__}: {error})")
    return found, held, notes


# ------------------------------------------------------------------------------------------- decisions
def pick(candidates: Sequence[Candidate], criterion: str) -> Candidate:
    """Auto mode with ``criterion`` as its probe: the best-scoring candidate if it beats identity, else identity."""
    identity = next(c for c in candidates if c.name == "identity")
    best = max(candidates, key=lambda c: c.scores[criterion])
    return best if best.scores[criterion] > identity.scores[criterion] else identity


def pick_conservative(candidates: Sequence[Candidate]) -> Candidate:
    """Keep identity unless a candidate beats it on every selector criterion; among several such
    candidates, the one with the best mean rank over the selectors."""
    identity = next(c for c in candidates if c.name == "identity")
    agreed = [
        c
        for c in candidates
        if c is not identity and all(c.scores[s] > identity.scores[s] for s in SELECTORS)
    ]
    if not agreed:
        return identity
    ranks = {s: sorted(candidates, key=lambda c: -c.scores[s]) for s in SELECTORS}
    return min(agreed, key=lambda c: np.mean([ranks[s].index(c) for s in SELECTORS]))


def outcome_rows(
    task: Task, seed: int, candidates: Sequence[Candidate], bootstrap: PairedBootstrap
) -> list[dict[str, Any]]:
    """Per criterion (and the conservative rule): Spearman rho with the metric, the pick, and its
    paired comparison with identity."""
    metric = task.primary_metric
    identity = next(c for c in candidates if c.name == "identity")
    truth = [c.metrics[metric] for c in candidates]
    best = max(truth)
    rows = []
    for rule in (*[c.name for c in criteria.CRITERIA], CONSERVATIVE):
        chosen = pick_conservative(candidates) if rule == CONSERVATIVE else pick(candidates, rule)
        rho = float("nan")
        if rule != CONSERVATIVE:
            scores = [c.scores[rule] for c in candidates]
            if np.ptp(scores) > 0 and np.ptp(truth) > 0:
                rho = float(spearmanr(scores, truth).statistic)
        comparison = bootstrap.compare(chosen.record(), identity.record(), metric)
        worse = comparison.p_value is not None and comparison.p_value < ALPHA and comparison.diff < 0
        rows.append(
            {
                "task": task.name,
                "seed": seed,
                "rule": rule,
                "spearman": rho,
                "picked": chosen.name,
                "metric": metric,
                "diff_vs_identity": comparison.diff,
                "ci_low": comparison.ci_low,
                "ci_high": comparison.ci_high,
                "p_value": comparison.p_value,
                "significantly_worse": worse,
                "gap_to_best": best - chosen.metrics[metric],
                "best_row": candidates[int(np.argmax(truth))].name,
            }
        )
    return rows


# ------------------------------------------------------------------------------------------- output
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    return f"{value:+.{digits}f}" if isinstance(value, float) else str(value)


def _header(columns: Sequence[str]) -> list[str]:
    return [
        "| task (seed) | criterion rows | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]


def markdown(outcomes: list[dict[str, Any]], heldout: dict[str, bool]) -> str:
    """Two tables (Spearman rho; auto's pick and its difference vs identity) and a per-rule summary."""
    rules = list(dict.fromkeys(r["rule"] for r in outcomes))
    criteria_names = [r for r in rules if r != CONSERVATIVE]
    keys = list(dict.fromkeys((r["task"], r["seed"]) for r in outcomes))
    by = {(r["task"], r["seed"], r["rule"]): r for r in outcomes}
    rho_lines, pick_lines = _header(criteria_names), _header(rules)
    for task, seed in keys:
        label = f"| {task} ({seed}) | {'held out' if heldout[task] else 'fitted (transductive)'} | "
        rho_lines.append(
            label + " | ".join(_fmt(by[task, seed, r]["spearman"], 2) for r in criteria_names) + " |"
        )
        cells = []
        for r in rules:
            row = by[task, seed, r]
            mark = " **LOSS**" if row["significantly_worse"] else ""
            cells.append(f"{row['picked']} {_fmt(row['diff_vs_identity'])}{mark}")
        pick_lines.append(label + " | ".join(cells) + " |")
    summary = [
        "| rule | task-seeds | significantly worse than identity | kept identity | mean gap to best row |",
        "|---|---|---|---|---|",
    ]
    for r in rules:
        rows = [by[task, seed, r] for task, seed in keys]
        summary.append(
            f"| {r} | {len(rows)} | {sum(x['significantly_worse'] for x in rows)} | "
            f"{sum(x['picked'] == 'identity' for x in rows)} | {np.mean([x['gap_to_best'] for x in rows]):.4f} |"
        )
    sections = [
        "### Spearman rho between criterion score (higher = better) and the primary metric, across candidates",
        "\n".join(rho_lines),
        "### Auto mode with the criterion as probe: pick and primary-metric difference vs identity",
        "\n".join(pick_lines),
        "### Summary per rule",
        "\n".join(summary),
    ]
    return "\n\n".join(sections) + "\n"


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def candidate_rows(
    task: Task, seed: int, candidates: Sequence[Candidate], held: Held
) -> list[dict[str, Any]]:
    """One CSV row per candidate: metric, path, and every raw criterion value."""
    return [
        {
            "task": task.name,
            "seed": seed,
            "method": c.name,
            "family": c.family,
            "path": c.path,
            "held_out": held.held_out,
            "criterion_rows": len(held.index),
            task.primary_metric: c.metrics[task.primary_metric],
            **c.values,
        }
        for c in candidates
    ]


# ------------------------------------------------------------------------------------------- main
def label_free_methods(task: Task, config: BenchConfig) -> list[Method]:
    """The task's label-free candidates (auto mode itself and the label-using rows left out)."""
    return [
        m for m in select_methods([task], config)[task.name] if not m.uses_labels and m.name != "simskip-auto"
    ]


def run(args: argparse.Namespace) -> None:
    """Run every selected task and seed, write ``candidates.csv``, ``outcomes.csv`` and ``table.md``."""
    from simskip_core.plugins import all_tasks

    config = BenchConfig(suite=args.suite, seeds=parse_seeds(args.seeds), tasks=tuple(args.task or ()))
    options = LoadOptions(quick=config.quick, progress=False, seed=0)
    bootstrap = PairedBootstrap(n_boot=args.bootstrap, seed=0)
    args.out.mkdir(parents=True, exist_ok=True)
    cand_rows: list[dict[str, Any]] = []
    outcomes: list[dict[str, Any]] = []
    heldout: dict[str, bool] = {}
    skipped: list[str] = []
    for task in select_tasks(all_tasks(), config):
        tic = time.perf_counter()
        data = task.load(options)
        methods = label_free_methods(task, config)
        for seed in config.seeds:
            candidates, held, notes = fit_candidates(
                task, data, methods, seed, k=args.k, max_rows=args.max_rows
            )
            skipped += [f"- {task.name} (seed {seed}) {note}" for note in notes]
            if not any(c.name == "identity" for c in candidates):
                skipped.append(f"- {task.name} (seed {seed}): no identity row, task left out")
                continue
            heldout[task.name] = held.held_out
            cand_rows += candidate_rows(task, seed, candidates, held)
            outcomes += outcome_rows(task, seed, candidates, bootstrap)
        log.info("%s: %d candidates in %.0f s", task.name, len(candidates), time.perf_counter() - tic)
        _write_csv(args.out / "candidates.csv", cand_rows)
        _write_csv(args.out / "outcomes.csv", outcomes)
        text = (
            markdown(outcomes, heldout)
            + "\n### Candidates not run\n\n"
            + ("\n".join(skipped) or "none")
            + "\n"
        )
        (args.out / "table.md").write_text(text, encoding="utf-8")
    print(text)


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=["quick", "full"], default="quick")
    parser.add_argument("--task", action="append", help="only this task (repeat for several)")
    parser.add_argument("--seeds", default="0", help="seeds of the stochastic candidates, e.g. '0' or '0-2'")
    parser.add_argument("--k", type=int, default=10, help="neighbours of the k-NN criteria")
    parser.add_argument("--max-rows", type=int, default=criteria.MAX_ROWS, help="most rows a criterion reads")
    parser.add_argument("--bootstrap", type=int, default=2000, help="paired bootstrap resamples")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    parser.add_argument("--out", type=Path, default=Path("bench-results/label-free"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    with threadpool_limits(args.threads):
        run(args)


if __name__ == "__main__":
    main()
