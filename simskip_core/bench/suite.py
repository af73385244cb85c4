"""The suite: runs the selected tasks (in parallel workers), then builds the report; ``simskip bench``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from simskip_core.bench.config import CONFIG_FILE, BenchConfig, config_from_args, select_methods, select_tasks
from simskip_core.bench.display import Display, QueueDisplay
from simskip_core.bench.runner import BenchResult, Runner, gemm_gflops
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
    with _thread_limit(config.threads):
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


def _worker(config: BenchConfig, task: Task, methods: list[Method], queue: Any) -> None:
    """Body of a worker process: run one task, report its status and failure count, exit."""
    runner = Runner(config, QueueDisplay(queue))
    try:
        status = runner.run_task(task, methods)
        queue.put(("status", task.name, jsonable(status), runner.failures))
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
    display: Display,
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
    from simskip_core.bench import report

    started_cpu = time.process_time() + _children_cpu()
    display = Display(config.quiet)
    total = sum(len(task_cells(methods[t.name], config.seeds)) for t in tasks)
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
                runner = Runner(config, display)
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
