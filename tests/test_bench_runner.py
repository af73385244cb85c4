"""The benchmark runner on tiny synthetic tasks registered at run time through a plugin object.

The plugin manager is replaced by a fresh one holding only the synthetic plugin, so these tests do
not load (or depend on) the real domain plugins.
"""

from __future__ import annotations

import csv
import json
import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pluggy
import pytest

from simskip_core import hooks, plugins
from simskip_core.bench import BenchConfig, run_bench
from simskip_core.embeddings import EmbeddingSet
from simskip_core.errors import MissingDataError
from simskip_core.evaluation import knn_correct, probe_correct, similarity_eval
from simskip_core.hooks import hookimpl
from simskip_core.selection import LabelProbe
from simskip_core.tasks import EvalResult, ItemScores, LoadOptions, Method, MethodOutput, Task, TaskData

DEFAULTS = {
    "epochs": 2,
    "batch_size": 64,
    "hidden_dim": 16,
    "projector_dim": 8,
    "patience": None,
    "val_fraction": 0.0,
}


def _blobs(seed: int = 0) -> TaskData:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 16)) * 2.0

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % 3
        return (centres[y] + rng.normal(size=(n, 16))).astype(np.float32), y.astype(np.int64)

    xtr, ytr = sample(120)
    xte, yte = sample(60)
    return TaskData(train=EmbeddingSet(xtr, labels=ytr), test=EmbeddingSet(xte, labels=yte))


def _words(seed: int = 0) -> TaskData:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(80, 8)).astype(np.float32)
    pairs = rng.integers(0, 80, size=(60, 2))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    gold = np.einsum("ij,ij->i", unit[pairs[:, 0]], unit[pairs[:, 1]]) + rng.normal(scale=0.3, size=60)
    return TaskData(train=EmbeddingSet(x), test=EmbeddingSet(x), context={"pairs": pairs, "gold": gold})


def _evaluate_labels(
    data: TaskData, train: np.ndarray, test: np.ndarray, seed: int, extras: Any
) -> EvalResult:
    assert data.train.labels is not None and data.test.labels is not None
    knn = knn_correct(train, data.train.labels, test, data.test.labels, k=5).astype(np.float64)
    probe, _ = probe_correct(train, data.train.labels, test, data.test.labels, cs=(1.0,), seed=seed)
    return EvalResult(
        metrics={"knn5_acc": float(knn.mean()), "probe_acc": float(probe.mean())},
        items={
            "knn5_acc": ItemScores("mean", knn),
            "probe_acc": ItemScores("mean", probe.astype(np.float64)),
        },
    )


def _evaluate_words(
    data: TaskData, train: np.ndarray, test: np.ndarray, seed: int, extras: Any
) -> EvalResult:
    return similarity_eval(test, data.context["pairs"], data.context["gold"])


def _chain(data: TaskData) -> dict[str, np.ndarray]:
    n = len(data.train)
    return {"chain": np.stack([np.arange(n - 3), np.arange(3, n)], axis=1)}


def _label_probe(data: TaskData) -> LabelProbe | None:
    return None if data.train.labels is None else LabelProbe(data.train.labels)


class SyntheticPlugin:
    """Registers four tasks (one whose data is missing) that carry their evaluation, probe, pair
    signals and a counting method."""

    def __init__(self, interrupt_on_call: int | None = None) -> None:
        self.loads: Counter[str] = Counter()
        self.runs: Counter[tuple[str, int]] = Counter()
        self.calls = 0
        self.interrupt_on_call = interrupt_on_call
        self.terminate_on_call: int | None = None  # send this process SIGTERM on that call

    def _load(self, name: str, make: Any) -> Any:
        def load(options: LoadOptions) -> TaskData:
            self.loads[name] += 1
            return make(options.seed)

        return load

    def _counting(self) -> Method:
        def run(task: Task, data: TaskData, seed: int, state: dict[str, Any]) -> MethodOutput:
            self.calls += 1
            if self.interrupt_on_call is not None and self.calls == self.interrupt_on_call:
                raise KeyboardInterrupt
            if self.terminate_on_call is not None and self.calls == self.terminate_on_call:
                os.kill(os.getpid(), signal.SIGTERM)
            self.runs[(task.name, seed)] += 1
            return MethodOutput(train=data.train.vectors * 2.0, test=data.test.vectors * 2.0)

        return Method("counting", "baseline", False, run, description="x -> 2x, counts its runs")

    @hookimpl
    def simskip_register_tasks(self, register: Any) -> None:
        register(
            Task(
                name="synthetic/blobs",
                domain="synthetic",
                description="three Gaussian blobs in 16-d",
                source="generated",
                load=self._load("synthetic/blobs", _blobs),
                primary_metric="knn5_acc",
                metrics=("knn5_acc", "probe_acc"),
                defaults=DEFAULTS,
                evaluate=_evaluate_labels,
                default_probe=_label_probe,
                pair_signals=_chain,
                methods=(self._counting(),),
            )
        )
        register(
            Task(
                name="synthetic/words",
                domain="synthetic",
                description="similarity of random pairs",
                source="generated",
                load=self._load("synthetic/words", _words),
                primary_metric="spearman",
                metrics=("spearman",),
                defaults=DEFAULTS,
                evaluate=_evaluate_words,
                default_probe=_label_probe,
            )
        )

        def missing(options: LoadOptions) -> TaskData:
            raise MissingDataError("the synthetic corpus is not installed; fix: pip install synthetic-corpus")

        register(
            Task(
                name="other/missing",
                domain="other",
                description="data that is not installed",
                source="nowhere",
                load=missing,
                primary_metric="knn5_acc",
                metrics=("knn5_acc",),
                evaluate=_evaluate_labels,
            )
        )
        register(
            Task(
                name="other/slow",
                domain="other",
                description="a full-suite-only task",
                source="generated",
                load=self._load("other/slow", _blobs),
                primary_metric="knn5_acc",
                metrics=("knn5_acc", "probe_acc"),
                quick=False,
                evaluate=_evaluate_labels,
            )
        )


@pytest.fixture
def plugin(monkeypatch: pytest.MonkeyPatch) -> SyntheticPlugin:
    manager = pluggy.PluginManager(hooks.PROJECT)
    manager.add_hookspecs(hooks)
    synthetic = SyntheticPlugin()
    manager.register(synthetic, name="synthetic-test-plugin")
    monkeypatch.setattr(plugins, "_manager", manager)
    return synthetic


def _config(tmp_path: Path, **kwargs: Any) -> BenchConfig:
    base: dict[str, Any] = {
        "out": tmp_path / "run",
        "seeds": (0, 1),
        "quiet": True,
        "cache_dir": tmp_path / "cache",
        "n_boot": 200,
    }
    base.update(kwargs)
    return BenchConfig(**base)


def test_full_run_writes_outputs_and_skips_missing_data(plugin: SyntheticPlugin, tmp_path: Path) -> None:
    config = _config(tmp_path, plots=True)
    result = run_bench(config)
    out = config.out
    assert result.failures == 0, result.run["failures"]

    run = json.loads((out / "run.json").read_text())
    statuses = {s["task"]: s for s in run["tasks"]}
    assert set(statuses) == {
        "synthetic/blobs",
        "synthetic/words",
        "other/missing",
    }  # other/slow: full suite only
    assert statuses["other/missing"]["status"] == "skipped"
    assert "pip install synthetic-corpus" in statuses["other/missing"]["reason"]
    assert run["environment"]["packages"]["torch"]
    assert "commit" in run["environment"]["git"]
    assert run["environment"]["gemm_gflops_float32"] > 0

    blobs = next(s for s in run["summaries"] if s["task"] == "synthetic/blobs")
    rows = blobs["rows"]
    for name in (
        "identity",
        "centerl2",
        "whitening",
        "allbutthetop",
        "simskip-ntxent",
        "simskip-studentt",
        "simskip-difficulty",
        "simskip-pairs",
        "simskip-multisimilarity",
        "random-residual",
        "simskip-auto",
        "fewlabel-probe",
        "fewlabel-adapter",
        "fewlabel-simskip",
        "counting",
    ):
        assert name in rows, name
    assert rows["identity"]["deterministic"] and rows["simskip-ntxent"]["n_runs"] == 2
    assert rows["simskip-auto"]["section"] == "label-using"  # its probe reads labels
    assert rows["fewlabel-simskip"]["comparisons"]["vs_fewlabel_probe"]["metric"] == "kshot_probe_acc"
    assert rows["simskip-ntxent"]["comparisons"]["vs_identity"]["outcome"] in {"win", "tie", "loss"}
    assert blobs["verdict"].startswith("best label-free method")

    # the random-residual control matches the trained refiner's displacement in the same (task, seed) cell
    cells = {(c["task"], c["method"], c["seed"]): c for c in run["cells"]}
    for seed in (0, 1):
        trained = cells[("synthetic/blobs", "simskip-ntxent", seed)]["info"]["mean_shift"]
        control = cells[("synthetic/blobs", "random-residual", seed)]["info"]["target_shift"]
        assert control == pytest.approx(trained)
    cell = cells[("synthetic/blobs", "simskip-ntxent", 0)]
    assert cell["timings"]["fit_seconds"] > 0 and cell["timings"]["apply_items_per_second"] > 0
    assert cell["memory"]["peak_rss_mb"] > 0

    # the similarity task has no labels and no pairs: those rows are reported as not applicable
    na = {(d["task"], d["method"]) for d in run["not_applicable"]}
    assert ("synthetic/words", "fewlabel-simskip") in na and (
        "synthetic/words",
        "simskip-multisimilarity",
    ) in na

    with open(out / "results.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert {"task", "method", "metric", "mean", "std", "p_holm_vs_identity"} <= set(table[0])
    assert any(
        r["method"] == "simskip-ntxent" and r["metric"] == "knn5_acc" and r["diff_vs_identity"] for r in table
    )
    with open(out / "cells.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) >= len(run["cells"])

    markdown = (out / "results.md").read_text()
    for heading in (
        "## Label-free methods",
        "## Label-using methods",
        "## Skipped tasks",
        "### synthetic/blobs",
    ):
        assert heading in markdown
    assert "pip install synthetic-corpus" in markdown
    assert markdown == result.markdown
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert "bars-synthetic__blobs.png" in pngs and "projection-synthetic.png" in pngs
    for png in (out / "plots").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![synthetic/blobs](plots/bars-synthetic__blobs.png)" in markdown


def test_resume_does_not_redo_finished_cells(plugin: SyntheticPlugin, tmp_path: Path) -> None:
    methods = ("simskip-ntxent", "random-residual", "counting")
    config = _config(tmp_path, tasks=("synthetic/blobs",), methods=methods, seeds=(0, 1, 2), plots=False)
    plugin.interrupt_on_call = 2  # the counting method is interrupted on its second call (seed 1)
    with pytest.raises(KeyboardInterrupt):
        run_bench(config)
    assert plugin.runs == Counter({("synthetic/blobs", 0): 1})
    assert plugin.loads["synthetic/blobs"] == 1
    done = sorted(
        p.relative_to(config.out / "cells").as_posix() for p in (config.out / "cells").rglob("*.json")
    )
    assert (
        "synthetic__blobs/counting/seed-0.json" in done
        and "synthetic__blobs/counting/seed-1.json" not in done
    )

    plugin.interrupt_on_call = None
    with pytest.raises(FileExistsError, match="--resume"):
        run_bench(config)  # an existing run folder needs resume=True
    first = json.loads((config.out / "cells/synthetic__blobs/simskip-ntxent/seed-0.json").read_text())
    result = run_bench(config, resume=True)
    assert result.failures == 0
    # seed 0 of the counting method was not recomputed; seeds 1 and 2 ran once each
    assert plugin.runs == Counter(
        {("synthetic/blobs", 0): 1, ("synthetic/blobs", 1): 1, ("synthetic/blobs", 2): 1}
    )
    again = json.loads((config.out / "cells/synthetic__blobs/simskip-ntxent/seed-0.json").read_text())
    assert again == first
    rows = result.summaries[0]["rows"]
    assert rows["counting"]["n_runs"] == 3 and rows["simskip-ntxent"]["n_runs"] == 3

    # a third run finds every cell done and does not even load the task
    loads = plugin.loads["synthetic/blobs"]
    third = run_bench(config, resume=True)
    assert plugin.loads["synthetic/blobs"] == loads
    assert sum(plugin.runs.values()) == 3
    # the interrupted session wrote no report but recorded its time, so the sessions add up
    assert [s.get("interrupted", False) for s in third.run["sessions"]] == [True, False, False]
    assert third.run["sessions"][0]["wall_seconds"] > 0 and third.run["sessions"][0]["cpu_seconds"] > 0
    assert third.run["wall_seconds"] == pytest.approx(sum(s["wall_seconds"] for s in third.run["sessions"]))


def test_sigterm_stops_the_run_like_ctrl_c_and_records_the_session(
    plugin: SyntheticPlugin, tmp_path: Path
) -> None:
    config = _config(tmp_path, tasks=("synthetic/blobs",), methods=("counting",), seeds=(0, 1), plots=False)
    before = signal.getsignal(signal.SIGTERM)
    plugin.terminate_on_call = 2  # `kill` arrives while seed 1 runs
    with pytest.raises(KeyboardInterrupt):
        run_bench(config)
    assert signal.getsignal(signal.SIGTERM) is before  # the handler lives only while the suite runs
    assert (config.out / "cells/synthetic__blobs/counting/seed-0.json").is_file()
    assert not (config.out / "cells/synthetic__blobs/counting/seed-1.json").exists()
    sessions = json.loads((config.out / "sessions.json").read_text())
    assert [s.get("interrupted") for s in sessions] == [True]

    plugin.terminate_on_call = None
    result = run_bench(config, resume=True)
    assert plugin.runs == Counter({("synthetic/blobs", 0): 1, ("synthetic/blobs", 1): 1})
    assert [s.get("interrupted", False) for s in result.run["sessions"]] == [True, False]


def test_unknown_names_list_the_valid_ones(plugin: SyntheticPlugin, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown task 'nope'.*synthetic/blobs.*synthetic/words"):
        run_bench(_config(tmp_path, tasks=("nope",)))
    with pytest.raises(ValueError, match=r"unknown method 'simskip-nope'.*counting.*simskip-ntxent"):
        run_bench(_config(tmp_path, methods=("simskip-nope",)))
    with pytest.raises(ValueError, match=r"unknown domain 'vision'.*other, synthetic"):
        run_bench(_config(tmp_path, domains=("vision",)))


def test_cli_lists_errors_and_filters(
    plugin: SyntheticPlugin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from simskip_core.cli import main

    assert main(["bench", "--task", "nope", "--out", str(tmp_path / "x")]) == 2  # a usage error
    assert (
        "valid tasks: other/missing, other/slow, synthetic/blobs, synthetic/words" in capsys.readouterr().err
    )
    assert main(["bench", "--list", "--domain", "synthetic"]) == 0
    listed = capsys.readouterr().out
    assert "synthetic/blobs" in listed and "other/missing" not in listed
    out = tmp_path / "cli"
    code = main(
        [
            "bench",
            "--task",
            "synthetic/words",
            "--method",
            "whitening",
            "--seeds",
            "0",
            "--out",
            str(out),
            "--quiet",
            "--no-plots",
            "--bootstrap",
            "200",
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| whitening |" in printed and "identity" in printed and "simskip-ntxent" not in printed
    config = json.loads((out / "config.json").read_text())
    assert config["seeds"] == [0] and config["methods"] == ["whitening"]


def test_parallel_workers_give_the_same_cells(plugin: SyntheticPlugin, tmp_path: Path) -> None:
    methods = ("centerl2", "simskip-ntxent", "fewlabel-simskip")
    sequential = run_bench(_config(tmp_path, out=tmp_path / "seq", methods=methods, seeds=(0,), plots=False))
    parallel = run_bench(
        _config(tmp_path, out=tmp_path / "par", methods=methods, seeds=(0,), plots=False, jobs=2)
    )
    assert parallel.failures == 0
    assert [s["status"] for s in parallel.run["tasks"]] == [s["status"] for s in sequential.run["tasks"]]

    def metrics(result: Any) -> dict[tuple[str, str, Any], dict[str, float]]:
        return {(c["task"], c["method"], c["seed"]): c["metrics"] for c in result.run["cells"]}

    assert metrics(parallel) == metrics(sequential)
    assert parallel.run["environment"]["bench_jobs"] == 2


def test_report_only_rebuilds_from_cells_with_per_task_seeds(
    plugin: SyntheticPlugin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Seeds extended task by task: --report-only runs nothing and names each task's seeds."""
    from simskip_core.cli import main

    out = tmp_path / "run"
    common = ["--quiet", "--no-plots", "--bootstrap", "200", "--cache-dir", str(tmp_path / "cache")]
    methods = ["--method", "simskip-ntxent,counting"]
    first = ["bench", "--seeds", "0", "--out", str(out), "--jobs", "1", *methods, *common]
    assert main([*first, "--task", "synthetic/blobs,synthetic/words"]) == 0
    assert json.loads((out / "config.json").read_text())["jobs"] == 1
    more = ["bench", "--resume", str(out), "--seeds", "0-2", "--task", "synthetic/blobs", *common]
    assert main(more) == 0
    runs, loads = sum(plugin.runs.values()), sum(plugin.loads.values())
    sessions = json.loads((out / "sessions.json").read_text())
    capsys.readouterr()

    # the resume stored its --task filter; 'all' clears it
    report_all = ["bench", "--resume", str(out), "--seeds", "0-2", "--task", "all", "--report-only"]
    assert main(report_all) == 0
    printed = capsys.readouterr().out
    assert sum(plugin.runs.values()) == runs and sum(plugin.loads.values()) == loads  # nothing ran
    assert json.loads((out / "sessions.json").read_text()) == sessions  # and no session was added
    seeds_line = (
        "Tasks with other seeds than the run's (their rows use the seeds listed): synthetic/words: 0."
    )
    assert seeds_line in printed
    assert "d = 16; seeds 0-2" in printed and "d = 8; seeds 0" in printed
    assert "| other/missing | not run |" in printed  # never loaded in this run
    assert "over 2 sessions (interrupted and resumed)" in printed
    sessions_line = next(line for line in printed.splitlines() if line.startswith("- sessions: "))
    assert sessions_line.count(" min wall)") == 2  # each session's command and wall time
    run = json.loads((out / "run.json").read_text())
    cpu = sum(c["timings"]["run_cpu_seconds"] + c["timings"]["eval_cpu_seconds"] for c in run["cells"])
    cpu += sum(t.get("load_cpu_seconds") or 0.0 for t in run["tasks"])
    assert f"CPU time of the cells and task loads: {cpu / 60:.1f} min" in printed

    # a run whose sessions all died before finishing still reports what its cells cost
    (out / "sessions.json").unlink()
    assert main(report_all) == 0
    assert "wall time not recorded (no session of this run finished" in capsys.readouterr().out
    run = json.loads((out / "run.json").read_text())
    rows = {s["task"]: s["rows"] for s in run["summaries"]}
    assert rows["synthetic/blobs"]["simskip-ntxent"]["seeds"] == [0, 1, 2]
    assert rows["synthetic/words"]["simskip-ntxent"]["seeds"] == [0]
    assert rows["synthetic/blobs"]["identity"]["seeds"] == []  # deterministic: ran once

    tasks = "synthetic/blobs,other/slow"
    assert main(["bench", "--resume", str(out), "--seeds", "0-2", "--task", tasks, "--report-only"]) == 0
    assert "| other/slow | not run | no cells yet" in capsys.readouterr().out
    assert sum(plugin.runs.values()) == runs and sum(plugin.loads.values()) == loads

    assert main(["bench", "--report-only", "--out", str(out)]) == 2  # a usage error
    assert "--report-only rebuilds the report of an earlier run: pass --resume OUT" in capsys.readouterr().err


def test_format_seeds() -> None:
    from simskip_core.bench.report import format_seeds

    assert format_seeds([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8"
    assert format_seeds([3]) == "3" and format_seeds([]) == ""


def test_describe_seeds_names_rows_with_fewer_seeds_than_the_task() -> None:
    from simskip_core.bench.report import describe_seeds

    even = {"rows": {"identity": {"seeds": []}, "a": {"seeds": [0, 1, 2]}, "b": {"seeds": [2, 1, 0]}}}
    assert describe_seeds(even) == "0-2"
    assert describe_seeds({"rows": {"identity": {"seeds": []}}}) == ""
    uneven = {
        "rows": {
            "identity": {"seeds": []},
            "a": {"seeds": [0, 1, 2, 3]},
            "c": {"seeds": [0, 3]},
            "b": {"seeds": [0, 3]},
            "d": {"seeds": [1]},
        }
    }
    assert describe_seeds(uneven) == "0-3; fewer for b, c: 0, 3; fewer for d: 1"
