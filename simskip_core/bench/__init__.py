"""The cross-domain benchmark suite (``simskip bench``): configuration, cell store, runner, display,
suite, statistics, report and the core's generic methods.

Every task that an installed plugin registers through ``simskip_register_tasks`` is loaded once
(base embeddings are cached on disk by the plugin), then every method (the core's generic methods
from :mod:`simskip_core.bench.methods` plus the methods plugins declare through ``simskip_task_methods``)
is fitted on the task's training embeddings and scored by the task's own evaluator.

A *cell* is one (task, method, seed); a method that does not depend on the seed is run once per task
(seed ``det``). Each finished cell is written atomically to ``<out>/cells/<task>/<method>/<seed>.json``
(+ ``.npz`` with the per-item scores the paired bootstrap needs), so an interrupted run resumes with
``--resume <out>`` without redoing finished cells. At the end the statistics
(:mod:`simskip_core.bench.stats`) and outputs (:mod:`simskip_core.bench.report`) are built from the
cell files.

Hyper-parameters come from each task's ``defaults`` and are identical for every seed; nothing is tuned
on the test split. The engine never imports this package.
"""

from __future__ import annotations

from simskip_core.lazy import lazy_exports

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

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        **dict.fromkeys(
            [
                "FULL_SEEDS",
                "QUICK_SEEDS",
                "BenchConfig",
                "add_arguments",
                "parse_seeds",
                "select_methods",
                "select_tasks",
            ],
            "simskip_core.bench.config",
        ),
        "BenchResult": "simskip_core.bench.runner",
        **dict.fromkeys(["main", "rebuild_report", "run_bench"], "simskip_core.bench.suite"),
    },
)
