"""The cross-domain benchmark suite runner (``simskip bench``).

Every task that an installed plugin registers through ``simskip_register_tasks`` is loaded once
(base embeddings are cached on disk by the plugin), then every method (the core's generic methods
from :mod:`simskip_core.methods` plus the methods plugins declare through ``simskip_task_methods``)
is fitted on the task's training embeddings and scored by the plugin's ``simskip_evaluate`` hook.

A *cell* is one (task, method, seed); a method that does not depend on the seed is run once per task
(seed ``det``). Each finished cell is written atomically to ``<out>/cells/<task>/<method>/<seed>.json``
(+ ``.npz`` with the per-item scores the paired bootstrap needs), so an interrupted run resumes with
``--resume <out>`` without redoing finished cells. At the end the statistics (:mod:`simskip_core.stats`)
and outputs (:mod:`simskip_core.report`) are built from the cell files.

Hyper-parameters come from each task's ``defaults`` and are identical for every seed; nothing is tuned
on the test split.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub

import argparse
import datetime as _dt
import hashlib
import json
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from simskip_core.errors import MissingDataError
from simskip_core.tasks import EvalResult, ItemScores, LoadOptions, Method, MethodOutput, Task, TaskData

__all__ = [
    "FULL_SEEDS",
    "QUICK_SEEDS",
    "BenchConfig",
    "BenchResult",
    "add_arguments",
    "main",
    "parse_seeds",
    "rebuild_report",
    "run_bench",
    "select_methods",
    "select_tasks",
]

#: Seeds of the full suite.
FULL_SEEDS: tuple[int, ...] = tuple(range(10))
#: Seeds of ``--suite quick`` (one, to stay within 10 minutes on 2 cores; ``--seeds`` adds more).
QUICK_SEEDS: tuple[int, ...] = (0,)
#: Seed key of a method that is run once for every seed.
DET = "det"
#: Test rows kept for the 2-D projection plots.
PROJECTION_ROWS = 1000
CONFIG_FILE = "config.json"


# ============================================================================ configuration
@dataclass
class BenchConfig:
    """Everything that defines a benchmark run (stored in ``<out>/config.json``).

    Attributes:
        suite: "quick" (``task.quick`` tasks, smaller subsets, :data:`QUICK_SEEDS`) or "full" (seeds 0–9).
        seeds: seeds of stochastic methods.
        domains, tasks, methods: filters (empty: everything).
        out: output folder.
        use_cache: read and write cached base embeddings.
        cache_dir: cache folder (None: :class:`LoadOptions`' default).
        quiet: plain log lines instead of the live progress display.
        shots: labelled examples per class of the few-label rows.
        n_boot: bootstrap resamples.
        plots: write PNG plots.
        threads: torch and BLAS threads during the run (None: leave the libraries' defaults). The
            refiners and probes are small, so one thread avoids the oversubscription that makes
            small operations many times slower on a busy machine.
        jobs: tasks run in parallel worker processes (forked; 1 runs everything in this process).
        command: the command line that started the run (for the report).
    """

    suite: str = "quick"
    seeds: tuple[int, ...] = QUICK_SEEDS
    domains: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    out: Path = Path("bench-results")
    use_cache: bool = True
    cache_dir: Path | None = None
    quiet: bool = False
    shots: int = 10
    n_boot: int = 2000
    plots: bool = True
    threads: int | None = 1
    jobs: int = 1
    command: str = ""

    def __post_init__(self) -> None:
        if self.suite not in ("quick", "full"):
            raise ValueError(f"suite must be 'quick' or 'full', got {self.suite!r}.")
        if not self.seeds:
            raise ValueError("at least one seed is needed.")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {list(self.seeds)}.")
        if self.jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {self.jobs}.")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {self.threads}.")
        if self.shots < 1:
            raise ValueError(f"shots must be >= 1, got {self.shots}.")
        self.out = Path(self.out)

    @property
    def quick(self) -> bool:
        """Whether tasks load their quick subsets."""
        return self.suite == "quick"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        data = asdict(self)
        data["out"] = str(self.out)
        data["cache_dir"] = None if self.cache_dir is None else str(self.cache_dir)
        data["seeds"] = list(self.seeds)
        for key in ("domains", "tasks", "methods"):
            data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchConfig:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        data["out"] = Path(data["out"])
        data["cache_dir"] = None if data.get("cache_dir") is None else Path(data["cache_dir"])
        for key in ("seeds", "domains", "tasks", "methods"):
            data[key] = tuple(data.get(key, ()))
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def parse_seeds(text: str) -> tuple[int, ...]:
    """Parse ``"0,1,2"``, ``"0-9"`` or ``"0-4,7"`` into a tuple of distinct seeds (in the given order)."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo:
                    raise ValueError(part)
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
        except ValueError as error:
            raise ValueError(
                f"cannot read seeds {text!r}: use non-negative integers, e.g. '0,1,2' or '0-9'."
            ) from error
    if not seeds:
        raise ValueError(f"no seeds in {text!r}: use e.g. '0,1,2' or '0-9'.")
    return tuple(dict.fromkeys(seeds))


def _split_names(values: Sequence[str] | None) -> tuple[str, ...]:
    names: list[str] = []
    for value in values or ():
        names.extend(v.strip() for v in value.split(",") if v.strip())
    return tuple(dict.fromkeys(names))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``simskip bench`` options to ``parser``."""
    parser.description = (
        "Run the cross-domain benchmark suite: every task the installed plugins register, every method, "
        "several seeds; writes per-cell JSON, a run JSON, a CSV, a markdown table and plots."
    )
    parser.add_argument(
        "--suite",
        choices=["quick", "full"],
        default=None,
        help="quick (default): quick tasks, small subsets, seed 0; full: every task, seeds 0-9",
    )
    parser.add_argument(
        "--domain",
        action="append",
        metavar="NAME",
        help="only these domains (repeat or comma-separate; 'all' clears a filter stored by an earlier --resume)",
    )
    parser.add_argument(
        "--task",
        action="append",
        metavar="NAME",
        help="only these tasks (repeat or comma-separate; 'all' clears a filter stored by an earlier --resume)",
    )
    parser.add_argument(
        "--method",
        action="append",
        metavar="NAME",
        help="only these methods (repeat or comma-separate; 'all' clears a filter stored by an earlier --resume)",
    )
    parser.add_argument(
        "--seeds",
        default=None,
        help="seeds of stochastic methods, e.g. '0,1,2' or '0-9' (overrides the suite's)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: bench-results/<timestamp>)"
    )
    parser.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="OUT",
        help="continue the run in folder OUT, skipping finished cells",
    )
    parser.add_argument(
        "--no-cache",
        action="store_true",
        default=None,
        help="re-extract base embeddings instead of reading the cache",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="folder of cached base embeddings (default ~/.cache/simskip)",
    )
    parser.add_argument(
        "--shots",
        type=int,
        default=None,
        metavar="K",
        help="labelled examples per class in the few-label rows (default 10)",
    )
    parser.add_argument(
        "--bootstrap", type=int, default=None, metavar="B", help="bootstrap resamples (default 2000)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch/BLAS threads (default 1; 0 = the libraries' defaults)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="tasks run at once in worker processes (default 2 where there are 2+ CPUs)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="with --resume: rebuild the report from the finished cells, run nothing",
    )
    parser.add_argument("--no-plots", action="store_true", default=None, help="skip the PNG plots")
    parser.add_argument(
        "--quiet", action="store_true", default=None, help="log lines instead of the live progress display"
    )
    parser.add_argument(
        "--list", action="store_true", help="list the tasks and methods that would run, then exit"
    )


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Build the run configuration from parsed arguments; with ``--resume`` start from the stored one."""
    given: dict[str, Any] = {}
    if getattr(args, "suite", None) is not None:
        given["suite"] = args.suite
    if getattr(args, "seeds", None) is not None:
        given["seeds"] = parse_seeds(args.seeds)
    for key in ("domain", "task", "method"):
        if getattr(args, key, None):
            names = _split_names(getattr(args, key))
            given[key + "s"] = () if names == ("all",) else names  # "all" clears a stored filter
    if getattr(args, "no_cache", None):
        given["use_cache"] = False
    if getattr(args, "cache_dir", None) is not None:
        given["cache_dir"] = args.cache_dir
    if getattr(args, "shots", None) is not None:
        given["shots"] = args.shots
    if getattr(args, "bootstrap", None) is not None:
        given["n_boot"] = args.bootstrap
    if getattr(args, "threads", None) is not None:
        given["threads"] = args.threads or None
    if getattr(args, "jobs", None) is not None:
        given["jobs"] = args.jobs
    if getattr(args, "no_plots", None):
        given["plots"] = False
    given["quiet"] = bool(getattr(args, "quiet", False))
    given["command"] = (
        "simskip bench " + " ".join(sys.argv[2:])
        if len(sys.argv) > 1 and sys.argv[1] == "bench"
        else "simskip bench"
    )
    resume = getattr(args, "resume", None)
    if resume is not None:
        stored = Path(resume) / CONFIG_FILE
        if not stored.is_file():
            raise FileNotFoundError(
                f"--resume {resume}: no {CONFIG_FILE} there; pass the folder of an earlier `simskip bench` run."
            )
        base = BenchConfig.from_dict(json.loads(stored.read_text(encoding="utf-8")))
        if getattr(args, "out", None) is not None and Path(args.out) != Path(resume):
            raise ValueError(
                "--resume and --out name different folders; --resume continues the run in its own folder."
            )
        given["command"] = base.command or given["command"]  # the command that defined the run
        if "suite" in given and "seeds" not in given and given["suite"] != base.suite:
            given["seeds"] = QUICK_SEEDS if given["suite"] == "quick" else FULL_SEEDS
        return replace(base, out=Path(resume), **given)
    suite = given.get("suite", "quick")
    given.setdefault("seeds", QUICK_SEEDS if suite == "quick" else FULL_SEEDS)
    given.setdefault("jobs", default_jobs())
    out = getattr(args, "out", None)
    if out is None:
        out = Path("bench-results") / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return BenchConfig(out=Path(out), **given)


# ============================================================================ selection
def _unknown(kind: str, names: Sequence[str], valid: Sequence[str]) -> ValueError:
    return ValueError(
        f"unknown {kind} {', '.join(map(repr, names))}; valid {kind}s: {', '.join(sorted(valid)) or '(none registered)'}."
    )


def select_tasks(tasks: dict[str, Task], config: BenchConfig) -> list[Task]:
    """The tasks of this run: by ``--domain`` and ``--task``, and ``task.quick`` in the quick suite
    (a task named with ``--task`` runs even when it is not a quick task). Unknown names raise
    :class:`ValueError` listing the valid ones."""
    domains = sorted({t.domain for t in tasks.values()})
    bad = [d for d in config.domains if d not in domains]
    if bad:
        raise _unknown("domain", bad, domains)
    bad = [t for t in config.tasks if t not in tasks]
    if bad:
        raise _unknown("task", bad, list(tasks))
    chosen = []
    for task in tasks.values():
        if config.domains and task.domain not in config.domains:
            continue
        if config.tasks and task.name not in config.tasks:
            continue
        if config.quick and not task.quick and task.name not in config.tasks:
            continue
        chosen.append(task)
    return chosen


def task_methods(task: Task) -> list[Method]:
    """The core's methods followed by the methods plugins declare for ``task`` (names must be unique)."""
    from simskip_core.methods import core_methods
    from simskip_core.plugins import get_plugin_manager

    methods = list(core_methods())
    names = {m.name for m in methods}
    for declared in get_plugin_manager().hook.simskip_task_methods(task=task):
        for method in declared or ():
            if not isinstance(method, Method):
                raise TypeError(
                    f"simskip_task_methods for {task.name} returned {type(method).__name__}, not a Method."
                )
            if method.name in names:
                raise ValueError(
                    f"two methods named {method.name!r} for task {task.name}; method names must be unique."
                )
            names.add(method.name)
            methods.append(method)
    return methods


def select_methods(tasks: Sequence[Task], config: BenchConfig) -> dict[str, list[Method]]:
    """Methods per task after ``--method``; an unknown name raises :class:`ValueError` listing the
    valid ones. With ``--method``, ``identity`` is always added (it is every comparison's reference),
    and ``fewlabel-probe`` whenever a label-using method is asked for."""
    per_task = {task.name: task_methods(task) for task in tasks}
    valid = sorted({m.name for methods in per_task.values() for m in methods})
    if not config.methods:
        return per_task
    bad = [m for m in config.methods if m not in valid]
    if bad:
        raise _unknown("method", bad, valid)
    chosen: dict[str, list[Method]] = {}
    for name, methods in per_task.items():
        wanted = set(config.methods) | {"identity"}
        if any(m.uses_labels and m.name in config.methods for m in methods):
            wanted.add("fewlabel-probe")
        chosen[name] = [m for m in methods if m.name in wanted]
    return chosen


# ============================================================================ files
def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "__" for c in name)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(
        json.dumps(obj, indent=1, sort_keys=True, default=_json_default, allow_nan=True), encoding="utf-8"
    )
    os.replace(tmp, path)


def write_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` (.npz) through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 64 else f"<array {value.shape} {value.dtype}>"
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=_json_default))


class CellStore:
    """Per-cell result files of one run folder."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def path(self, task: str, method: str, seed: int | None) -> Path:
        """JSON file of a cell."""
        key = DET if seed is None else f"seed-{seed}"
        return self.out / "cells" / _slug(task) / _slug(method) / f"{key}.json"

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


# ============================================================================ progress
class _Display:
    """Rich live progress (default: an overall bar and one bar per running task) or plain log lines
    on stderr (``--quiet``)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self._progress: Any = None
        self._bar: Any = None
        self._task_bars: dict[str, Any] = {}

    @contextmanager
    def running(self, total: int) -> Iterator[_Display]:
        """Show the live display on stderr (unless quiet, or stderr is not a terminal) while the body runs."""
        if self.quiet or not sys.stderr.isatty():
            yield self
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        with progress:
            self._progress = progress
            self._bar = progress.add_task("simskip bench", total=total)
            try:
                yield self
            finally:
                self._progress = None

    def log(self, message: str) -> None:
        """A log line (above the live display, or on stderr)."""
        stamp = time.strftime("%H:%M:%S")
        if self._progress is not None:
            self._progress.console.print(f"[{stamp}] {message}", markup=False, highlight=False)
        else:
            print(f"[{stamp}] {message}", file=sys.stderr, flush=True)

    def start(self, task: str, total: int) -> None:
        """A task begins: add its bar."""
        if self._progress is not None:
            self._task_bars[task] = self._progress.add_task(f"  {task}", total=total)

    def describe(self, task: str, text: str) -> None:
        """What the task is doing now."""
        if self._progress is not None and task in self._task_bars:
            self._progress.update(self._task_bars[task], description=f"  {text}")

    def advance(self, task: str, n: int = 1) -> None:
        """``n`` more cells of ``task`` are finished."""
        if self._progress is not None:
            self._progress.advance(self._bar, n)
            if task in self._task_bars:
                self._progress.advance(self._task_bars[task], n)

    def finish(self, task: str) -> None:
        """A task ended: remove its bar."""
        if self._progress is not None and task in self._task_bars:
            self._progress.remove_task(self._task_bars.pop(task))


class _QueueDisplay:
    """The display of a worker process: forwards every call to the parent through a queue."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def log(self, message: str) -> None:
        self.queue.put(("log", message))

    def start(self, task: str, total: int) -> None:
        self.queue.put(("start", task, total))

    def describe(self, task: str, text: str) -> None:
        self.queue.put(("describe", task, text))

    def advance(self, task: str, n: int = 1) -> None:
        self.queue.put(("advance", task, n))

    def finish(self, task: str) -> None:
        self.queue.put(("finish", task))


# ============================================================================ the runner
@dataclass
class BenchResult:
    """What :func:`run_bench` returns: the run document, per-task summaries and the written files."""

    run: dict[str, Any]
    summaries: list[dict[str, Any]]
    files: dict[str, Path] = field(default_factory=dict)
    failures: int = 0
    markdown: str = ""


def _config_key(task: Task, method: Method, config: BenchConfig) -> str:
    parts = {
        "defaults": dict(task.defaults),
        "quick": config.quick,
        "shots": config.shots if method.uses_labels else None,
        "method": method.name,
        "family": method.family,
        "source": task.source,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cells(methods: Sequence[Method], seeds: Sequence[int]) -> list[tuple[Method, int | None]]:
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


def _is_done(doc: dict[str, Any] | None, key: str) -> bool:
    return doc is not None and doc.get("status") in ("ok", "n/a") and doc.get("config_key") == key


def _evaluate(task: Task, data: TaskData, out: MethodOutput, seed: int) -> EvalResult:
    from simskip_core.plugins import get_plugin_manager

    result = get_plugin_manager().hook.simskip_evaluate(
        task=task, data=data, train=out.train, test=out.test, seed=seed, extras=out.extras
    )
    if result is None:
        raise RuntimeError(
            f"no installed plugin evaluates task {task.name} (simskip_evaluate returned None)."
        )
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


class _Runner:
    def __init__(self, config: BenchConfig, display: _Display | _QueueDisplay) -> None:
        self.config = config
        self.display = display
        self.store = CellStore(config.out)
        self.failures = 0

    def load_options(self) -> LoadOptions:
        options = LoadOptions(
            quick=self.config.quick, use_cache=self.config.use_cache, progress=not self.config.quiet, seed=0
        )
        if self.config.cache_dir is not None:
            options = replace(options, cache_dir=Path(self.config.cache_dir).expanduser())
        return options

    def run_task(self, task: Task, methods: Sequence[Method]) -> dict[str, Any]:
        """Load ``task`` (unless every cell is done) and run its unfinished cells; returns its status."""
        self.display.start(task.name, len(_cells(methods, self.config.seeds)))
        try:
            return self._run_task(task, methods)
        finally:
            self.display.finish(task.name)

    def _run_task(self, task: Task, methods: Sequence[Method]) -> dict[str, Any]:
        config = self.config
        status_path = config.out / "tasks" / f"{_slug(task.name)}.json"
        cells = _cells(methods, config.seeds)
        keys = {m.name: _config_key(task, m, config) for m in methods}
        todo = [(m, s) for m, s in cells if not _is_done(self.store.read(task.name, m.name, s), keys[m.name])]
        previous = json.loads(status_path.read_text(encoding="utf-8")) if status_path.is_file() else None
        if not todo and previous is not None and previous.get("status") == "ok":
            self.display.log(f"{task.name}: all {len(cells)} cells already done")
            self.display.advance(task.name, len(cells))
            return dict(previous)
        self.display.describe(task.name, f"{task.name}: loading")
        tic, cpu = time.perf_counter(), time.process_time()
        status: dict[str, Any] = {
            "task": task.name,
            "domain": task.domain,
            "description": task.description,
            "source": task.source,
        }
        status.update(
            {
                "primary_metric": task.primary_metric,
                "metrics": list(task.metrics),
                "defaults": _jsonable(dict(task.defaults)),
                "quick": config.quick,
            }
        )
        try:
            with PeakRSS() as memory:
                data = task.load(self.load_options())
        except MissingDataError as error:
            status.update(status="skipped", reason=str(error))
            write_json_atomic(status_path, status)
            self.display.log(f"[skipped] {task.name}: {error}")
            self.display.advance(task.name, len(cells))
            return status
        except Exception as error:
            self.failures += 1
            status.update(
                status="failed", reason=f"{type(error).__name__}: {error}", traceback=traceback.format_exc()
            )
            write_json_atomic(status_path, status)
            self.display.log(f"[failed] {task.name}: loading raised {type(error).__name__}: {error}")
            self.display.advance(task.name, len(cells))
            return status
        status.update(
            status="ok",
            load_seconds=round(time.perf_counter() - tic, 3),
            load_cpu_seconds=round(time.process_time() - cpu, 3),
            load_peak_rss_mb=memory.peak_mb,
            n_train=len(data.train),
            n_test=len(data.test),
            dim=data.train.dim,
            train_labelled=None if data.train.labels is None else int((data.train.labels >= 0).sum()),
        )
        write_json_atomic(status_path, status)
        self.display.log(
            f"{task.name}: loaded {len(data.train)} train / {len(data.test)} test items, d={data.train.dim} "
            f"in {status['load_seconds']:.1f}s; {len(todo)} of {len(cells)} cells to run"
        )
        states: dict[int | None, dict[str, Any]] = {}
        evals: dict[str, tuple[dict[str, float], dict[str, ItemScores]]] = {}
        done_count = len(cells) - len(todo)
        self.display.advance(task.name, done_count)
        todo_set = {(m.name, s) for m, s in todo}
        for method, seed in cells:
            state = states.setdefault(seed, {"shots_per_class": config.shots})
            if (method.name, seed) not in todo_set:
                doc = self.store.read(task.name, method.name, seed)
                if doc is not None and doc.get("status") == "ok":
                    state[method.name] = doc.get("info", {})
                continue
            self.display.describe(
                task.name, f"{task.name} · {method.name} · {DET if seed is None else f'seed {seed}'}"
            )
            doc = self.run_cell(task, data, method, seed, state, keys[method.name], evals)
            if doc["status"] == "failed":
                self.failures += 1
                self.display.log(f"[failed] {task.name} · {method.name} · seed {seed}: {doc['reason']}")
            elif doc["status"] == "n/a":
                if seed is None or seed == config.seeds[0]:
                    self.display.log(f"[n/a] {task.name} · {method.name}: {doc['reason']}")
            elif config.quiet:
                primary = doc["metrics"].get(task.primary_metric)
                self.display.log(
                    f"{task.name} · {method.name} · {DET if seed is None else f'seed {seed}'}: "
                    f"{task.primary_metric}={primary:.4f} (fit {doc['timings']['fit_seconds']:.2f}s)"
                )
            self.display.advance(task.name)
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
        from simskip_core.methods import NotApplicable, _shots

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
            info = _jsonable(out.info)
            state[method.name] = info
            uses_labels = bool(info.get("uses_labels", method.uses_labels))
            tic, cpu = time.perf_counter(), time.process_time()
            reused = info.get("representation_of")
            if reused is not None and reused not in evals:
                stored = self.store.read(task.name, str(reused), None)
                if stored is not None and stored.get("status") == "ok":
                    evals[reused] = (dict(stored["metrics"]), self.store.items(stored))
            if reused in evals:
                metrics, items = dict(evals[reused][0]), dict(evals[reused][1])
            else:
                result = _evaluate(task, data, out, run_seed)
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
                    from simskip_core.stats import KSHOT_METRIC

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
                self.config.out / "projections" / f"{_slug(task.name)}.npz", data, out, method.name, seed
            )
        self.store.write(doc, items)
        self.store.path(task.name, method.name, seed).with_suffix(".failed.json").unlink(missing_ok=True)
        return doc


def _check_output(out: MethodOutput, data: TaskData, method: Method) -> None:
    for name, arr, n in (("train", out.train, len(data.train)), ("test", out.test, len(data.test))):
        if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.shape[0] != n:
            shape = getattr(arr, "shape", None)
            raise ValueError(
                f"method {method.name} returned {name} vectors of shape {shape}; expected ({n}, d)."
            )
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"method {method.name} returned non-finite {name} vectors.")


def _prepare_out(config: BenchConfig, resuming: bool) -> None:
    path = config.out / CONFIG_FILE
    if path.is_file() and not resuming:
        raise FileExistsError(
            f"{config.out} already holds a benchmark run; pass --resume {config.out} to continue it or choose another --out."
        )
    config.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, config.to_dict())


def run_bench(config: BenchConfig, *, resume: bool = False) -> BenchResult:
    """Run the suite described by ``config`` and write every output into ``config.out``.

    Args:
        config: the run configuration.
        resume: continue the run already in ``config.out`` (finished cells are kept); without it an
            existing run folder is an error.

    Raises:
        ValueError: an unknown domain, task or method name (the message lists the valid ones).
        KeyboardInterrupt: after saving, when interrupted (finished cells stay; resume later).
    """
    from simskip_core.plugins import all_tasks

    started = time.time()
    tasks = select_tasks(all_tasks(), config)
    methods = select_methods(tasks, config)
    _prepare_out(config, resume)
    with _thread_limit(config.threads):
        return _run(config, tasks, methods, started)


def rebuild_report(config: BenchConfig) -> BenchResult:
    """Write the outputs of the run in ``config.out`` from its finished cells, running nothing.

    Useful after an interruption, or when the seeds were extended task by task: every selected
    task is reported with the seeds it has, and a task with no cells yet is listed as not run.
    The machine information is the one the run recorded (``run.json``), not this machine's.
    """
    from simskip_core import report
    from simskip_core.plugins import all_tasks

    if not (config.out / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{config.out} holds no benchmark run (no {CONFIG_FILE}).")
    tasks = select_tasks(all_tasks(), config)
    methods = select_methods(tasks, config)
    statuses = []
    for task in tasks:
        path = config.out / "tasks" / f"{_slug(task.name)}.json"
        if path.is_file():
            statuses.append(json.loads(path.read_text(encoding="utf-8")))
        else:
            statuses.append(
                {
                    "task": task.name,
                    "domain": task.domain,
                    "status": "not run",
                    "reason": f"no cells yet; run them with `simskip bench --resume {config.out}`",
                }
            )
    run_json = config.out / "run.json"
    environment = (
        json.loads(run_json.read_text(encoding="utf-8"))["environment"]
        if run_json.is_file()
        else report.environment_info()
    )
    return report.build_outputs(config, tasks, methods, statuses, environment=environment)


@contextmanager
def _thread_limit(threads: int | None) -> Iterator[None]:
    """Limit torch's intra-op threads and the BLAS/OpenMP pools to ``threads`` (None: no change)."""
    if threads is None:
        yield
        return
    import torch
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        torch.set_num_threads(previous)


def default_jobs() -> int:
    """Worker processes by default: 2 where the CPU count allows and ``fork`` exists, else 1."""
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        return 1
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return float(usage.ru_utime + usage.ru_stime)


def _worker(config: BenchConfig, task: Task, methods: list[Method], queue: Any) -> None:
    """Body of a worker process: run one task, report its status and failure count, exit."""
    runner = _Runner(config, _QueueDisplay(queue))
    try:
        status = runner.run_task(task, methods)
        queue.put(("status", task.name, _jsonable(status), runner.failures))
    except KeyboardInterrupt:
        queue.put(("interrupted", task.name))
    except BaseException as error:  # report, never hang the parent
        queue.put(
            (
                "status",
                task.name,
                {
                    "task": task.name,
                    "domain": task.domain,
                    "status": "failed",
                    "reason": f"{type(error).__name__}: {error}",
                },
                1,
            )
        )


def _run_parallel(
    config: BenchConfig,
    tasks: Sequence[Task],
    methods: dict[str, list[Method]],
    display: _Display,
) -> tuple[list[dict[str, Any]], int]:
    """Run tasks in up to ``config.jobs`` forked worker processes; returns statuses (in task order)
    and the number of failures. Each worker writes its own cell files; the parent only displays."""
    import multiprocessing
    import queue as queue_module

    context = multiprocessing.get_context("fork")
    messages: Any = context.Queue()
    pending = list(tasks)
    active: dict[str, Any] = {}
    statuses: dict[str, dict[str, Any]] = {}
    counts = {"failures": 0, "interrupted": 0}

    def handle(message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "status":
            statuses[message[1]] = message[2]
            counts["failures"] += int(message[3])
        elif kind == "interrupted":
            counts["interrupted"] += 1
        else:
            getattr(display, kind)(*message[1:])

    def drain(timeout: float) -> None:
        while True:
            try:
                handle(messages.get(timeout=timeout))
            except queue_module.Empty:
                return

    try:
        while pending or active:
            while pending and len(active) < config.jobs:
                task = pending.pop(0)
                process = context.Process(
                    target=_worker,
                    args=(config, task, methods[task.name], messages),
                    name=f"simskip-bench {task.name}",
                )
                process.start()
                active[task.name] = process
            drain(0.2)
            for name, process in list(active.items()):
                if process.exitcode is None:
                    continue
                drain(0.5)  # what the worker sent just before it exited
                process.join()
                del active[name]
                if name not in statuses and not counts["interrupted"]:
                    counts["failures"] += 1
                    task = next(t for t in tasks if t.name == name)
                    statuses[name] = {
                        "task": name,
                        "domain": task.domain,
                        "status": "failed",
                        "reason": f"the worker process exited with code {process.exitcode} (killed, e.g. out "
                        "of memory?); finished cells are kept, rerun with --resume",
                    }
                    display.finish(name)
            if counts["interrupted"]:
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        for process in active.values():
            process.terminate()
        for process in active.values():
            process.join()
        raise
    failures = counts["failures"]
    return [statuses[t.name] for t in tasks if t.name in statuses], failures


def _run(
    config: BenchConfig, tasks: Sequence[Task], methods: dict[str, list[Method]], started: float
) -> BenchResult:
    from simskip_core import report

    started_cpu = time.process_time() + _children_cpu()
    display = _Display(config.quiet)
    total = sum(len(_cells(methods[t.name], config.seeds)) for t in tasks)
    environment = report.environment_info()
    environment["gemm_gflops_float32"] = gemm_gflops()
    environment["bench_threads"] = config.threads
    environment["bench_jobs"] = config.jobs
    statuses: list[dict[str, Any]] = []
    failures = 0
    interrupted = False
    jobs = min(config.jobs, len(tasks))
    with display.running(total):
        display.log(
            f"simskip bench: {len(tasks)} task(s), seeds {list(config.seeds)}, {total} cell(s), "
            f"{jobs} worker(s) -> {config.out}"
        )
        try:
            if jobs > 1:
                statuses, failures = _run_parallel(config, tasks, methods, display)
            else:
                runner = _Runner(config, display)
                for task in tasks:
                    statuses.append(runner.run_task(task, methods[task.name]))
                failures = runner.failures
        except KeyboardInterrupt:
            interrupted = True
    if interrupted:
        display.log(
            f"interrupted; finished cells are saved. Resume with: simskip bench --resume {config.out}"
        )
        raise KeyboardInterrupt
    result = report.build_outputs(
        config,
        tasks,
        methods,
        statuses,
        environment=environment,
        wall_seconds=time.time() - started,
        cpu_seconds=time.process_time() + _children_cpu() - started_cpu,
    )
    result.failures = failures
    return result


def _list(config: BenchConfig) -> int:
    from simskip_core.plugins import all_tasks

    tasks = select_tasks(all_tasks(), config)
    methods = select_methods(tasks, config)
    for task in tasks:
        names = ", ".join(m.name for m in methods[task.name])
        print(f"{task.name}  [{task.domain}{'' if task.quick else ', full suite only'}]  {task.description}")
        print(f"    primary metric: {task.primary_metric}; methods: {names}")
    if not tasks:
        print("no tasks: install a plugin that registers tasks (see `simskip plugins`).")
    return 0


def main(args: argparse.Namespace) -> int:
    """Run ``simskip bench`` from parsed arguments; returns the exit code (1 when a cell or task failed)."""
    config = config_from_args(args)
    if getattr(args, "list", False):
        return _list(config)
    if getattr(args, "report_only", False):
        if getattr(args, "resume", None) is None:
            raise ValueError("--report-only rebuilds the report of an earlier run: pass --resume OUT too.")
        result = rebuild_report(config)
    else:
        try:
            result = run_bench(config, resume=getattr(args, "resume", None) is not None)
        except KeyboardInterrupt:
            return 130
    print(result.markdown)
    print()
    for name, path in result.files.items():
        print(f"{name}: {path}")
    if result.failures:
        print(
            f"{result.failures} task(s) or cell(s) failed; see {config.out / 'results.md'}.", file=sys.stderr
        )
        return 1
    return 0
