"""Runs the cells of one task: loads it, fits each method, evaluates, stores the cell."""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from simskip_core.bench.config import DET, PROJECTION_ROWS, BenchConfig
from simskip_core.bench.display import Display, QueueDisplay
from simskip_core.bench.store import (
    CellStore,
    config_key,
    is_done,
    jsonable,
    slug,
    task_cells,
    write_json_atomic,
    write_npz_atomic,
)
from simskip_core.errors import MissingDataError
from simskip_core.tasks import EvalResult, ItemScores, LoadOptions, Method, MethodOutput, Task, TaskData


class PeakRSS:
    """Context manager sampling the process's resident set size every ``interval`` seconds.

    ``peak_mb`` is the peak RSS seen, ``delta_mb`` its increase over the RSS at entry (the cell's own
    working memory). On systems without ``/proc/self/statm`` only ``resource.getrusage``'s
    process-lifetime peak is available and ``delta_mb`` is None.
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.peak_mb: float | None = None
        self.delta_mb: float | None = None
        self._start = 0.0
        self._peak = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            self._page = os.sysconf("SC_PAGE_SIZE")
            self._proc = Path("/proc/self/statm").is_file()
        except (ValueError, OSError, AttributeError):
            self._proc = False

    def _rss(self) -> float:
        with open("/proc/self/statm", "rb") as handle:
            return int(handle.read().split()[1]) * self._page / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, self._rss())

    def __enter__(self) -> PeakRSS:
        if self._proc:
            self._start = self._peak = self._rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._proc and self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, self._rss())
            self.peak_mb = round(self._peak, 1)
            self.delta_mb = round(self._peak - self._start, 1)
        else:
            import resource

            self.peak_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def gemm_gflops(size: int = 512, seconds: float = 0.3) -> float:
    """This machine's float32 ``torch.matmul`` rate in GFLOP/s (the refiner's cost is mostly GEMMs)."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.matmul(a, b)
    iterations, tic = 0, time.perf_counter()
    while time.perf_counter() - tic < seconds:
        torch.matmul(a, b)
        iterations += 1
    return round(2 * size**3 * iterations / (time.perf_counter() - tic) / 1e9, 2)


# ============================================================================ the runner
@dataclass
class BenchResult:
    """What :func:`run_bench` returns: the run document, per-task summaries and the written files."""

    run: dict[str, Any]
    summaries: list[dict[str, Any]]
    files: dict[str, Path] = field(default_factory=dict)
    failures: int = 0
    markdown: str = ""


def evaluate_output(task: Task, data: TaskData, out: MethodOutput, seed: int) -> EvalResult:
    """Score ``out`` with the task's own ``evaluate``, or, for a task that carries none, with the
    ``simskip_evaluate`` hook (the fallback for tasks written before tasks carried their evaluator)."""
    if task.evaluate is not None:
        result = task.evaluate(data, out.train, out.test, seed, out.extras)
    else:
        from simskip_core.plugins import get_plugin_manager

        result = get_plugin_manager().hook.simskip_evaluate(
            task=task, data=data, train=out.train, test=out.test, seed=seed, extras=out.extras
        )
        if result is None:
            raise RuntimeError(
                f"task {task.name} carries no evaluate and no plugin's simskip_evaluate answers it; "
                "give the Task an evaluate=callable(data, train, test, seed, extras) -> EvalResult."
            )
    if not isinstance(result, EvalResult):
        raise TypeError(f"the evaluator of {task.name} returned {type(result).__name__}, not an EvalResult.")
    if task.primary_metric not in result.metrics:
        raise RuntimeError(
            f"the evaluator of {task.name} did not report the primary metric {task.primary_metric!r} (got {sorted(result.metrics)})."
        )
    return result


def _kshot(data: TaskData, out: MethodOutput, shots: np.ndarray, seed: int) -> ItemScores | None:
    """Accuracy on labelled test items of a logistic-regression probe trained on the ``shots`` rows."""
    from simskip_core.evaluation import probe_correct

    y_train, y_test = data.train.labels, data.test.labels
    if y_train is None or y_test is None:
        return None
    mask = y_test >= 0
    if not mask.any():
        return None
    correct, _ = probe_correct(out.train[shots], y_train[shots], out.test[mask], y_test[mask], seed=seed)
    return ItemScores("mean", correct.astype(np.float64))


def _save_projection(path: Path, data: TaskData, out: MethodOutput, method: str, seed: int) -> None:
    """2-D PCA coordinates of (a subsample of) the test embeddings before and after ``method``."""
    n = len(data.test)
    rows = np.sort(np.random.default_rng(0).permutation(n)[:PROJECTION_ROWS])

    def pca2(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        x = x - x.mean(0)
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        return (x @ vt[:2].T).astype(np.float32)

    before, after = data.test.vectors[rows], out.test[rows]
    shift = (
        float(np.linalg.norm(after - before, axis=1).mean()) if after.shape == before.shape else float("nan")
    )
    arrays = {
        "before": pca2(before),
        "after": pca2(after),
        "labels": (data.test.labels[rows] if data.test.labels is not None else np.full(len(rows), -1)).astype(
            np.int64
        ),
        "mean_shift": np.asarray(shift),
        "seed": np.asarray(seed),
        "method": np.asarray(method),
    }
    write_npz_atomic(path, arrays)


def unit_cells(methods: Sequence[Method], seeds: Sequence[int], seed: int) -> list[tuple[Method, int | None]]:
    """The cells of one (task, seed) unit in run order: those of ``seed``, and, in the unit of the run's
    first seed, the task's deterministic cells (as :func:`task_cells` interleaves them)."""
    first = seed == seeds[0]
    return [(m, s) for m, s in task_cells(methods, seeds) if s == seed or (s is None and first)]


def _reset_random_state(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators, so a unit's results never depend on
    which worker ran it or what that worker ran before."""
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class UnitResult:
    """What :meth:`Runner.run_unit` returns.

    Attributes:
        status: the task's status document when this unit loaded the task (None when the worker had
            it loaded already).
        failures: failed cells (and a failed load) of this unit.
    """

    status: dict[str, Any] | None
    failures: int = 0


class Runner:
    """Runs (task, seed) units in one process, keeping each loaded task's data for its later units."""

    def __init__(self, config: BenchConfig, display: Display | QueueDisplay) -> None:
        self.config = config
        self.display = display
        self.store = CellStore(config.out)
        self.failures = 0
        self._data: dict[str, TaskData] = {}
        self._evals: dict[str, dict[str, tuple[dict[str, float], dict[str, ItemScores]]]] = {}

    def load_options(self) -> LoadOptions:
        """The :class:`LoadOptions` every task of the run is loaded with."""
        options = LoadOptions(
            quick=self.config.quick, use_cache=self.config.use_cache, progress=not self.config.quiet, seed=0
        )
        if self.config.cache_dir is not None:
            options = replace(options, cache_dir=Path(self.config.cache_dir).expanduser())
        return options

    def todo(self, task: Task, methods: Sequence[Method], seed: int) -> list[tuple[Method, int | None]]:
        """The unfinished cells of the (task, seed) unit (a cell whose task defaults changed is unfinished)."""
        keys = {m.name: config_key(task, m, self.config) for m in methods}
        return [
            (m, s)
            for m, s in unit_cells(methods, self.config.seeds, seed)
            if not is_done(self.store.read(task.name, m.name, s), keys[m.name])
        ]

    @property
    def loaded(self) -> set[str]:
        """Names of the tasks whose data this process holds."""
        return set(self._data)

    def forget(self, name: str) -> None:
        """Drop the loaded data of task ``name`` (it has no units left for this process)."""
        self._data.pop(name, None)
        self._evals.pop(name, None)

    def run_unit(self, task: Task, methods: Sequence[Method], seed: int) -> UnitResult:
        """Run the unfinished cells of the (task, seed) unit, loading the task unless this process
        holds its data already. A load that fails (or finds the data missing) runs no cell."""
        status = None
        if task.name not in self._data:
            status = self._load(task)
            if status["status"] != "ok":
                return UnitResult(status, int(status["status"] == "failed"))
        data = self._data[task.name]
        todo = self.todo(task, methods, seed)
        cells = unit_cells(methods, self.config.seeds, seed)
        self.display.advance(task.name, len(cells) - len(todo))
        todo_set = {(m.name, s) for m, s in todo}
        keys = {m.name: config_key(task, m, self.config) for m in methods}
        evals = self._evals.setdefault(task.name, {})
        state: dict[str, Any] = {"shots_per_class": self.config.shots}
        failures = 0
        _reset_random_state(seed)
        for method, cell_seed in cells:
            if (method.name, cell_seed) not in todo_set:
                doc = self.store.read(task.name, method.name, cell_seed)
                if doc is not None and doc.get("status") == "ok":
                    state[method.name] = doc.get("info", {})
                continue
            self.display.describe(
                task.name,
                f"{task.name} · {method.name} · {DET if cell_seed is None else f'seed {cell_seed}'}",
            )
            doc = self.run_cell(task, data, method, cell_seed, state, keys[method.name], evals)
            failures += doc["status"] == "failed"
            self._log_cell(task, method, cell_seed, doc)
            self.display.advance(task.name)
        self.failures += failures
        return UnitResult(status, failures)

    def _log_cell(self, task: Task, method: Method, seed: int | None, doc: dict[str, Any]) -> None:
        if doc["status"] == "failed":
            self.display.log(f"[failed] {task.name} · {method.name} · seed {seed}: {doc['reason']}")
        elif doc["status"] == "n/a":
            if seed is None or seed == self.config.seeds[0]:
                self.display.log(f"[n/a] {task.name} · {method.name}: {doc['reason']}")
        elif self.config.quiet:
            primary = doc["metrics"].get(task.primary_metric)
            self.display.log(
                f"{task.name} · {method.name} · {DET if seed is None else f'seed {seed}'}: "
                f"{task.primary_metric}={primary:.4f} (fit {doc['timings']['fit_seconds']:.2f}s)"
            )

    def _load(self, task: Task) -> dict[str, Any]:
        """Load ``task`` into this process; returns (and writes) its status document."""
        status_path = self.config.out / "tasks" / f"{slug(task.name)}.json"
        self.display.describe(task.name, f"{task.name}: loading")
        tic, cpu = time.perf_counter(), time.process_time()
        status: dict[str, Any] = {
            "task": task.name,
            "domain": task.domain,
            "description": task.description,
            "source": task.source,
            "primary_metric": task.primary_metric,
            "metrics": list(task.metrics),
            "defaults": jsonable(dict(task.defaults)),
            "quick": self.config.quick,
        }
        try:
            with PeakRSS() as memory:
                data = task.load(self.load_options())
        except MissingDataError as error:
            status.update(status="skipped", reason=str(error))
            write_json_atomic(status_path, status)
            self.display.log(f"[skipped] {task.name}: {error}")
            return status
        except Exception as error:
            status.update(
                status="failed", reason=f"{type(error).__name__}: {error}", traceback=traceback.format_exc()
            )
            write_json_atomic(status_path, status)
            self.display.log(f"[failed] {task.name}: loading raised {type(error).__name__}: {error}")
            return status
        status.update(
            status="ok",
            load_seconds=round(time.perf_counter() - tic, 3),
            load_cpu_seconds=round(time.process_time() - cpu, 3),
            load_peak_rss_mb=memory.peak_mb,
            loads=1,
            n_train=len(data.train),
            n_test=len(data.test),
            dim=data.train.dim,
            train_labelled=None if data.train.labels is None else int((data.train.labels >= 0).sum()),
        )
        write_json_atomic(status_path, status)
        self.display.log(
            f"{task.name}: loaded {len(data.train)} train / {len(data.test)} test items, d={data.train.dim} "
            f"in {status['load_seconds']:.1f}s"
        )
        self._data[task.name] = data
        return status

    def run_cell(
        self,
        task: Task,
        data: TaskData,
        method: Method,
        seed: int | None,
        state: dict[str, Any],
        key: str,
        evals: dict[str, tuple[dict[str, float], dict[str, ItemScores]]],
    ) -> dict[str, Any]:
        from simskip_core.bench.methods import NotApplicable, _shots

        run_seed = 0 if seed is None else seed
        doc: dict[str, Any] = {
            "task": task.name,
            "method": method.name,
            "seed": seed,
            "family": method.family,
            "uses_labels": method.uses_labels,
            "config_key": key,
            "metrics": {},
            "timings": {},
            "memory": {},
            "info": {},
        }
        try:
            tic, cpu = time.perf_counter(), time.process_time()
            with PeakRSS() as memory:
                out = method.run(task, data, run_seed, state)
            run_seconds, run_cpu = time.perf_counter() - tic, time.process_time() - cpu
        except NotApplicable as reason:
            doc.update(status="n/a", reason=str(reason))
            self.store.write(doc, {})
            return doc
        except Exception as error:  # a failing method must not stop the suite
            doc.update(
                status="failed", reason=f"{type(error).__name__}: {error}", traceback=traceback.format_exc()
            )
            write_json_atomic(self.store.path(task.name, method.name, seed).with_suffix(".failed.json"), doc)
            return doc
        try:
            _check_output(out, data, method)
            info = jsonable(out.info)
            state[method.name] = info
            uses_labels = bool(info.get("uses_labels", method.uses_labels))
            tic, cpu = time.perf_counter(), time.process_time()
            reused = info.get("representation_of")
            if reused is not None:
                metrics, items = self._reused_eval(task, data, out, str(reused), evals)
            else:
                result = evaluate_output(task, data, out, run_seed)
                metrics, items = dict(result.metrics), dict(result.items)
                if seed is None:
                    evals[method.name] = (dict(metrics), dict(items))
            if uses_labels and seed is not None:
                try:
                    shots = _shots(task, data, seed, state)
                except NotApplicable:
                    shots = None
                kshot = None if shots is None else _kshot(data, out, shots, seed)
                if kshot is not None:
                    from simskip_core.bench.stats import KSHOT_METRIC

                    metrics[KSHOT_METRIC] = kshot.statistic()
                    items[KSHOT_METRIC] = kshot
            eval_seconds, eval_cpu = time.perf_counter() - tic, time.process_time() - cpu
        except Exception as error:
            doc.update(
                status="failed", reason=f"{type(error).__name__}: {error}", traceback=traceback.format_exc()
            )
            write_json_atomic(self.store.path(task.name, method.name, seed).with_suffix(".failed.json"), doc)
            return doc
        n_items = len(data.train) + len(data.test)
        apply_seconds = info.get("apply_seconds")
        if apply_seconds is None:
            apply_seconds = max(run_seconds - out.fit_seconds, 0.0)
        doc.update(
            status="ok",
            uses_labels=uses_labels,
            metrics={k: float(v) for k, v in metrics.items()},
            timings={
                "fit_seconds": round(float(out.fit_seconds), 4),
                "apply_seconds": round(float(apply_seconds), 4),
                "run_seconds": round(run_seconds, 4),
                "eval_seconds": round(eval_seconds, 4),
                "run_cpu_seconds": round(run_cpu, 4),
                "eval_cpu_seconds": round(eval_cpu, 4),
                "apply_items_per_second": round(n_items / apply_seconds, 1) if apply_seconds > 0 else None,
            },
            memory={"peak_rss_mb": memory.peak_mb, "peak_rss_increase_mb": memory.delta_mb},
            info=info,
            n_train=len(data.train),
            n_test=len(data.test),
        )
        if method.name == "simskip-ntxent" and seed == self.config.seeds[0]:
            _save_projection(
                self.config.out / "projections" / f"{slug(task.name)}.npz", data, out, method.name, seed
            )
        self.store.write(doc, items)
        self.store.path(task.name, method.name, seed).with_suffix(".failed.json").unlink(missing_ok=True)
        return doc

    def _reused_eval(
        self,
        task: Task,
        data: TaskData,
        out: MethodOutput,
        reused: str,
        evals: dict[str, tuple[dict[str, float], dict[str, ItemScores]]],
    ) -> tuple[dict[str, float], dict[str, ItemScores]]:
        """The scores of deterministic row ``reused``, whose representation ``out`` is: from this process,
        the store, or, when that row has not finished (another worker may run it now), by evaluating
        ``out`` exactly as that row is evaluated (seed 0), so the result never depends on the order."""
        if reused not in evals:
            stored = self.store.read(task.name, reused, None)
            if stored is not None and stored.get("status") == "ok":
                evals[reused] = (dict(stored["metrics"]), self.store.items(stored))
            else:
                result = evaluate_output(task, data, out, 0)
                evals[reused] = (dict(result.metrics), dict(result.items))
        return dict(evals[reused][0]), dict(evals[reused][1])


def _check_output(out: MethodOutput, data: TaskData, method: Method) -> None:
    for name, arr, n in (("train", out.train, len(data.train)), ("test", out.test, len(data.test))):
        if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.shape[0] != n:
            shape = getattr(arr, "shape", None)
            raise ValueError(
                f"method {method.name} returned {name} vectors of shape {shape}; expected ({n}, d)."
            )
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"method {method.name} returned non-finite {name} vectors.")
