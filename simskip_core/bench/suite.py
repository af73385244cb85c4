"""The suite: runs the selected tasks (in parallel workers), then builds the report; ``simskip bench``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simskip_core.bench.config import CONFIG_FILE, BenchConfig, config_from_args, select_methods, select_tasks
from simskip_core.bench.display import Display, QueueDisplay
from simskip_core.bench.runner import BenchResult, gemm_gflops
from simskip_core.bench.store import jsonable, slug, task_cells, write_json_atomic
from simskip_core.tasks import Method, Task


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
    with _thread_limit(config.threads), _terminate_as_interrupt():
        return _run(config, tasks, methods, started)


def rebuild_report(config: BenchConfig) -> BenchResult:
    """Write the outputs of the run in ``config.out`` from its finished cells, running nothing.

    Useful after an interruption, or when the seeds were extended task by task: every selected
    task is reported with the seeds it has, and a task with no cells yet is listed as not run.
    The machine information is the one the run recorded (``run.json``), not this machine's.
    """
    from simskip_core.bench import report
    from simskip_core.plugins import all_tasks

    if not (config.out / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{config.out} holds no benchmark run (no {CONFIG_FILE}).")
    tasks = select_tasks(all_tasks(), config)
    methods = select_methods(tasks, config)
    statuses = []
    for task in tasks:
        path = config.out / "tasks" / f"{slug(task.name)}.json"
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
def _terminate_as_interrupt() -> Iterator[None]:
    """While the suite runs, SIGTERM (``kill``, a batch scheduler's or container's stop) ends it as
    Ctrl-C does: finished cells stay, the session is recorded as interrupted, ``--resume`` continues.
    A run started in the background by a shell ignores SIGINT, so SIGTERM is how it is stopped.
    Worker processes forked meanwhile inherit the handler and stop at once when the parent ends them."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set signal handlers
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return float(usage.ru_utime + usage.ru_stime)


# ============================================================================ scheduling
@dataclass
class Unit:
    """One (task, seed) unit of work: the task's cells of that seed (plus its deterministic cells in
    the unit of the run's first seed).

    Attributes:
        task: the task.
        seed: the seed.
        order: position in task-then-seed order (breaks ties, so the schedule is reproducible).
        cells: number of cells in the unit.
        todo: names of the methods whose cells are unfinished.
    """

    task: Task
    seed: int
    order: int
    cells: int
    todo: list[str]


class Schedule:
    """The units of a run, handed out largest first by estimated CPU time.

    A unit's cost is the sum over its unfinished cells of the mean CPU time (fit, apply and
    evaluation) the same task and method took in finished cells: those in the run folder (an earlier
    session) and those finished in this run. For a task with no finished cell yet, its first unit
    goes before every other unit (it measures the task) and its other units wait behind the units
    with known costs. Among equal costs a task the worker has loaded already wins, then task order.
    Task statuses of several loads (one per worker that ran the task) are merged: load times add up.
    """

    def __init__(self, config: BenchConfig, tasks: Sequence[Task], methods: dict[str, list[Method]]) -> None:
        from simskip_core.bench.runner import Runner, unit_cells

        self.config = config
        self.tasks = list(tasks)
        self.methods = methods
        self.runner = Runner(config, Display(True))  # reads the store only
        self.costs: dict[tuple[str, str], list[float]] = {}
        self.pending: list[Unit] = []
        self.running: dict[str, int] = {}
        self.statuses: dict[str, dict[str, Any]] = {}
        self.done_cells: dict[str, int] = {}
        self.failures = 0
        for task in self.tasks:
            self.done_cells[task.name] = 0
            for seed in config.seeds:
                cells = unit_cells(methods[task.name], config.seeds, seed)
                todo = [m.name for m, _ in self.runner.todo(task, methods[task.name], seed)]
                self._observe(task.name, [(m.name, s) for m, s in cells])
                if todo:
                    self.pending.append(Unit(task, seed, len(self.pending), len(cells), todo))
                else:
                    self.done_cells[task.name] += len(cells)
            previous = self._previous(task)
            if not any(u.task is task for u in self.pending):
                if previous is not None and previous.get("status") == "ok":
                    self.statuses[task.name] = previous
                else:  # every cell done but no status: load the task once to record it
                    first = config.seeds[0]
                    size = len(unit_cells(methods[task.name], config.seeds, first))
                    self.done_cells[task.name] -= size
                    self.pending.append(Unit(task, first, len(self.pending), size, []))

    def _previous(self, task: Task) -> dict[str, Any] | None:
        path = self.config.out / "tasks" / f"{slug(task.name)}.json"
        if not path.is_file():
            return None
        previous: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return previous

    def _observe(self, task: str, cells: Sequence[tuple[str, int | None]]) -> None:
        """Record the CPU time of the finished ``cells`` of ``task`` (read from the cell store)."""
        for method, seed in cells:
            doc = self.runner.store.read(task, method, seed)
            if doc is None or doc.get("status") != "ok":
                continue
            timings = doc.get("timings", {})
            cpu = float(timings.get("run_cpu_seconds") or 0.0) + float(timings.get("eval_cpu_seconds") or 0.0)
            self.costs.setdefault((task, method), []).append(cpu)

    def estimate(self, unit: Unit) -> float | None:
        """Estimated CPU seconds of ``unit``; None when no cell of its task has finished yet."""
        known = [c for (task, _), costs in self.costs.items() if task == unit.task.name for c in costs]
        if not known:
            return None
        fallback = float(np.mean(known))
        total = 0.0
        for method in unit.todo:
            costs = self.costs.get((unit.task.name, method))
            total += float(np.mean(costs)) if costs else fallback
        return total

    def _priority(self, unit: Unit, loaded: set[str]) -> tuple[int, float, bool, int]:
        cost = self.estimate(unit)
        name = unit.task.name
        if cost is None:
            first = unit is next(u for u in self.pending if u.task.name == name)
            rank, cost = (2, 0.0) if first and not self.running.get(name) else (0, 0.0)
        else:
            rank = 1
        return rank, cost, name in loaded, -unit.order

    def next(self, loaded: set[str]) -> Unit | None:
        """The unit a worker holding the tasks ``loaded`` runs next (None: nothing left to hand out)."""
        if not self.pending:
            return None
        unit = max(self.pending, key=lambda u: self._priority(u, loaded))
        self.pending.remove(unit)
        self.running[unit.task.name] = self.running.get(unit.task.name, 0) + 1
        return unit

    def finish(self, unit: Unit, status: dict[str, Any] | None, failures: int) -> int:
        """Record a finished unit (its task's status when it loaded the task, its failures); returns
        the number of cells that will not run because the task could not be loaded."""
        name = unit.task.name
        self.running[name] -= 1
        self.failures += failures
        self._observe(name, [(m, unit.seed if self._stochastic(unit.task, m) else None) for m in unit.todo])
        if status is None:
            return 0
        old = self.statuses.get(name)
        if status.get("status") != "ok":
            if old is not None and old.get("status") == "failed" and failures:
                self.failures -= 1  # another worker already reported this task's load failure
            if old is None or old.get("status") == "ok":
                self.statuses[name] = status
            cancelled = [u for u in self.pending if u.task.name == name]
            self.pending = [u for u in self.pending if u.task.name != name]
            return unit.cells + sum(u.cells for u in cancelled)
        if old is None:
            self.statuses[name] = dict(status)
        elif old.get("status") == "ok":
            for key in ("load_seconds", "load_cpu_seconds", "loads"):
                old[key] = round(float(old.get(key) or 0.0) + float(status.get(key) or 0.0), 3)
            old["loads"] = int(old["loads"])
            old["load_peak_rss_mb"] = max(
                old.get("load_peak_rss_mb") or 0.0, status.get("load_peak_rss_mb") or 0.0
            )
        return 0

    def fail(self, unit: Unit, reason: str) -> None:
        """A worker died while running ``unit``: its task is reported failed (finished cells are kept)."""
        self.running[unit.task.name] -= 1
        self.failures += 1
        self.statuses[unit.task.name] = {
            "task": unit.task.name,
            "domain": unit.task.domain,
            "status": "failed",
            "reason": reason,
        }

    def _stochastic(self, task: Task, method: str) -> bool:
        return next(m for m in self.methods[task.name] if m.name == method).stochastic

    def active(self, name: str) -> bool:
        """Whether task ``name`` has units pending or running."""
        return bool(self.running.get(name)) or any(u.task.name == name for u in self.pending)

    def results(self) -> list[dict[str, Any]]:
        """The task statuses in task order, merged over loads; written to ``tasks/<task>.json``."""
        out = []
        for task in self.tasks:
            status = self.statuses.get(task.name)
            if status is None:
                continue
            if status.get("loads"):
                write_json_atomic(self.config.out / "tasks" / f"{slug(task.name)}.json", status)
            out.append(status)
        return out


class _Progress:
    """The parent's view of the display: a task's bar starts with its first unit and ends with its last."""

    def __init__(self, display: Display, schedule: Schedule) -> None:
        self.display = display
        self.schedule = schedule
        self.started: set[str] = set()

    def begin(self, unit: Unit) -> None:
        name = unit.task.name
        if name not in self.started:
            self.started.add(name)
            total = len(task_cells(self.schedule.methods[name], self.schedule.config.seeds))
            self.display.start(name, total)
            self.display.advance(name, self.schedule.done_cells[name])

    def end(self, unit: Unit, not_run: int) -> None:
        name = unit.task.name
        if not_run:
            self.display.advance(name, not_run)
        if not self.schedule.active(name):
            self.display.finish(name)


def _report_done_tasks(schedule: Schedule, display: Display) -> None:
    for task in schedule.tasks:
        status = schedule.statuses.get(task.name)
        if status is not None and not schedule.active(task.name):
            total = len(task_cells(schedule.methods[task.name], schedule.config.seeds))
            display.log(f"{task.name}: all {total} cells already done")
            display.advance(task.name, total)


def _run_sequential(schedule: Schedule, display: Display) -> None:
    """Run every unit in this process, in schedule order."""
    from simskip_core.bench.runner import Runner

    runner = Runner(schedule.config, display)
    progress = _Progress(display, schedule)
    while (unit := schedule.next(runner.loaded)) is not None:
        progress.begin(unit)
        result = runner.run_unit(unit.task, schedule.methods[unit.task.name], unit.seed)
        progress.end(unit, schedule.finish(unit, result.status, result.failures))
        if not schedule.active(unit.task.name):
            runner.forget(unit.task.name)


def _worker(
    config: BenchConfig,
    tasks: dict[str, Task],
    methods: dict[str, list[Method]],
    worker: int,
    inbox: Any,
    outbox: Any,
) -> None:
    """Body of a worker process: run the units the parent sends until it sends None."""
    from simskip_core.bench.runner import Runner

    runner = Runner(config, QueueDisplay(outbox))
    while (message := inbox.get()) is not None:
        name, seed, drop = message
        for gone in drop:
            runner.forget(gone)
        try:
            result = runner.run_unit(tasks[name], methods[name], seed)
            outbox.put(("unit", worker, jsonable(result.status), result.failures))
        except KeyboardInterrupt:
            outbox.put(("interrupted", worker))
            return
        except BaseException as error:  # report, never hang the parent
            task = tasks[name]
            reason = f"{type(error).__name__}: {error}"
            status = {"task": name, "domain": task.domain, "status": "failed", "reason": reason}
            outbox.put(("unit", worker, status, 1))


@dataclass
class _WorkerSlot:
    process: Any
    inbox: Any
    unit: Unit | None = None
    loaded: set[str] = field(default_factory=set)


def _run_parallel(config: BenchConfig, schedule: Schedule, display: Display, jobs: int) -> None:
    """Run the units in ``jobs`` forked worker processes, each handed the next unit when it is idle.
    Each worker writes its own cell files and keeps the data of the tasks it loaded until the
    schedule has no unit of them left; the parent only schedules and displays."""
    import multiprocessing
    import queue as queue_module

    context = multiprocessing.get_context("fork")
    outbox: Any = context.Queue()
    tasks = {t.name: t for t in schedule.tasks}
    progress = _Progress(display, schedule)
    slots: dict[int, _WorkerSlot] = {}
    interrupted = False

    def spawn(index: int) -> None:
        inbox = context.Queue()
        process = context.Process(
            target=_worker,
            args=(config, tasks, schedule.methods, index, inbox, outbox),
            name=f"simskip-bench worker {index}",
        )
        process.start()
        slots[index] = _WorkerSlot(process, inbox)

    def handle(message: tuple[Any, ...]) -> None:
        nonlocal interrupted
        kind = message[0]
        if kind == "unit":
            slot = slots[message[1]]
            assert slot.unit is not None
            unit, slot.unit = slot.unit, None
            progress.end(unit, schedule.finish(unit, message[2], int(message[3])))
        elif kind == "interrupted":
            interrupted = True
        else:
            getattr(display, kind)(*message[1:])

    def drain(timeout: float) -> None:
        while True:
            try:
                handle(outbox.get(timeout=timeout))
            except queue_module.Empty:
                return

    for index in range(jobs):
        spawn(index)
    try:
        while True:
            for slot in slots.values():
                if slot.unit is None and slot.process.exitcode is None:
                    unit = schedule.next(slot.loaded)
                    if unit is None:
                        continue
                    progress.begin(unit)
                    drop = sorted(n for n in slot.loaded if not schedule.active(n))
                    slot.loaded -= set(drop)
                    slot.loaded.add(unit.task.name)
                    slot.unit = unit
                    slot.inbox.put((unit.task.name, unit.seed, drop))
            if all(slot.unit is None for slot in slots.values()):
                break
            drain(0.2)
            if interrupted:
                raise KeyboardInterrupt
            for index, slot in list(slots.items()):
                if slot.process.exitcode is None or slot.unit is None:
                    continue
                drain(0.5)  # what the worker sent just before it exited
                if slot.unit is None:
                    continue
                unit, slot.unit = slot.unit, None
                schedule.fail(
                    unit,
                    f"the worker process exited with code {slot.process.exitcode} (killed, e.g. out of memory?); "
                    "finished cells are kept, rerun with --resume",
                )
                progress.end(unit, 0)
                spawn(index)
        for slot in slots.values():
            slot.inbox.put(None)
        for slot in slots.values():
            slot.process.join()
    except KeyboardInterrupt:
        for slot in slots.values():
            slot.process.terminate()
        for slot in slots.values():
            slot.process.join()
        raise


def _run(
    config: BenchConfig, tasks: Sequence[Task], methods: dict[str, list[Method]], started: float
) -> BenchResult:
    from simskip_core.bench import report

    started_cpu = time.process_time() + _children_cpu()
    display = Display(config.quiet)
    total = sum(len(task_cells(methods[t.name], config.seeds)) for t in tasks)
    environment = report.environment_info()
    environment["gemm_gflops_float32"] = gemm_gflops()
    environment["bench_threads"] = config.threads
    environment["bench_jobs"] = config.jobs
    interrupted = False
    schedule = Schedule(config, tasks, methods)
    jobs = max(1, min(config.jobs, len(schedule.pending)))
    with display.running(total):
        display.log(
            f"simskip bench: {len(tasks)} task(s), seeds {list(config.seeds)}, {total} cell(s) in "
            f"{len(schedule.pending)} unit(s) to run, {jobs} worker(s) -> {config.out}"
        )
        _report_done_tasks(schedule, display)
        try:
            if jobs > 1:
                _run_parallel(config, schedule, display, jobs)
            else:
                _run_sequential(schedule, display)
        except KeyboardInterrupt:
            interrupted = True
    cpu_seconds = time.process_time() + _children_cpu() - started_cpu
    if interrupted:
        report.record_session(config.out, time.time() - started, cpu_seconds, interrupted=True)
        display.log(
            f"interrupted; finished cells are saved. Resume with: simskip bench --resume {config.out}"
        )
        raise KeyboardInterrupt
    result = report.build_outputs(
        config,
        tasks,
        methods,
        schedule.results(),
        environment=environment,
        wall_seconds=time.time() - started,
        cpu_seconds=cpu_seconds,
    )
    result.failures = schedule.failures
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
    """Run ``simskip bench`` from parsed arguments; returns the exit code (1 when a cell or task failed).

    The suite runs on data and weights that ship in packages, so it sets ``HF_HUB_OFFLINE=1`` unless the
    caller set it (only here, never at import: ``simskip refine`` and library users stay untouched).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
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
