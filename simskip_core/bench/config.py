"""Configuration of a benchmark run: seeds, tasks, methods and the ``simskip bench`` arguments."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from simskip_core.tasks import Method, Task

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
        jobs: worker processes (forked) that run the (task, seed) units; 1 runs them in this process.
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
        help="worker processes running (task, seed) units, largest first (default 2 where there are 2+ CPUs)",
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
    """The core's methods, then the task's own ``methods``, then those plugins add through the
    ``simskip_task_methods`` hook (names must be unique)."""
    from simskip_core.bench.methods import core_methods
    from simskip_core.plugins import get_plugin_manager

    methods = list(core_methods())
    names = {m.name for m in methods}
    declared = [("Task.methods", task.methods)] + [
        ("simskip_task_methods", added) for added in get_plugin_manager().hook.simskip_task_methods(task=task)
    ]
    for origin, group in declared:
        for method in group or ():
            if not isinstance(method, Method):
                raise TypeError(f"{origin} for {task.name} holds {type(method).__name__}, not a Method.")
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


def default_jobs() -> int:
    """Worker processes by default: 2 where the CPU count allows and ``fork`` exists, else 1."""
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        return 1
    return 2 if (os.cpu_count() or 1) >= 2 else 1
