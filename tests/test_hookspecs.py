"""Every hookspec is documented, called by the core and exercised by a test; the fallback task hooks;
the core entries ``simskip_core.extract`` and ``simskip_core.attach``, through registered and real plugins.

The meta-test reads the sources: a hookspec must appear as ``## `name(`` in docs/hooks.md, be called
as ``hook.name(`` somewhere in ``simskip_core``, and be implemented (``@hookimpl def name``) by a
plugin in some test under ``tests/``; its docstring must say how answers combine.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pluggy
import pytest

import simskip_core
from simskip_core import EmbeddingSet, SimSkip, hooks, plugins
from simskip_core.augment import Augmentation
from simskip_core.bench import BenchConfig, run_bench
from simskip_core.evaluation import classification_eval
from simskip_core.hooks import hookimpl
from simskip_core.host import NoPluginError
from simskip_core.losses import ContrastiveLoss
from simskip_core.selection import LabelProbe, Probe
from simskip_core.tasks import EvalResult, LoadOptions, Method, MethodOutput, Task, TaskData

ROOT = Path(__file__).resolve().parents[1]
FIRSTRESULT = "first non-None answer wins"


# ------------------------------------------------------------------------------------- the meta-test
def _core_calls() -> set[str]:
    """Hooks ``simskip_core`` calls: ``....hook.<name>(...)``, or a hook named by a string argument of a
    call (``manager.subset_hook_caller("<name>", ...)``)."""
    called = set()
    for path in (ROOT / "simskip_core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if (
                isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Attribute)
                and func.value.attr == "hook"
            ):
                called.add(func.attr)
            called.update(
                arg.value for arg in node.args if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
            )
    return called


def _implemented_in_tests() -> set[str]:
    """Names of functions decorated with ``hookimpl`` (bare or ``hooks.hookimpl``) in tests/*.py."""
    names = set()
    for path in (ROOT / "tests").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and any(
                ast.unparse(d).split("(")[0].endswith("hookimpl") for d in node.decorator_list
            ):
                names.add(node.name)
    return names


def hookspec_problems(name: str, spec: Any, page: str, core: set[str], implemented: set[str]) -> list[str]:
    """Why hookspec ``name`` falls short of the rules (empty when it meets them)."""
    problems = []
    if f"## `{name}(" not in page:
        problems.append("not documented in docs/hooks.md")
    if name not in core:
        problems.append(f"never called by simskip_core (no `hook.{name}(`)")
    if name not in implemented:
        problems.append("no test registers a plugin implementing it")
    doc = inspect.getdoc(spec) or ""
    first = bool(getattr(spec, "simskip_spec", {}).get("firstresult"))
    if first and FIRSTRESULT not in doc:
        problems.append(f"firstresult but its docstring does not say '{FIRSTRESULT}'")
    if not first and not ("Broadcast" in doc and "collected" in doc):
        problems.append("broadcast but its docstring does not say that all answers are collected")
    return problems


def test_every_hookspec_is_documented_called_and_tested() -> None:
    page = (ROOT / "docs" / "hooks.md").read_text(encoding="utf-8")
    core, implemented = _core_calls(), _implemented_in_tests()
    names = hooks.hook_names()
    assert len(names) >= 9
    problems = {
        name: found
        for name in names
        if (found := hookspec_problems(name, getattr(hooks, name), page, core, implemented))
    }
    assert not problems, problems


def test_the_meta_test_catches_an_unused_undocumented_untested_hookspec() -> None:
    @hooks.hookspec(firstresult=True)
    def simskip_never_used(x: Any) -> Any:
        """An answer, maybe."""

    problems = hookspec_problems("simskip_never_used", simskip_never_used, "", {"simskip_other"}, set())
    assert len(problems) == 4, problems
    ok_doc = hookspec_problems(
        "simskip_attach",
        hooks.simskip_attach,
        "## `simskip_attach(",
        "hook.simskip_attach(",
        {"simskip_attach"},
    )
    assert ok_doc == []


def test_hooks_md_code_blocks_run() -> None:
    """The page's examples (a task carrying its behaviour; extract and attach with the shipped MiniLM)."""
    page = (ROOT / "docs" / "hooks.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    assert len(blocks) == 2
    for block in blocks:
        exec(compile(block, "docs/hooks.md", "exec"), {"__name__": "hooks_md"})


# ---------------------------------------------------------------------------- a plugin for every hook
def _blobs(options: LoadOptions) -> TaskData:
    rng = np.random.default_rng(options.seed)
    labels = np.arange(150) % 3
    x = ((rng.normal(size=(3, 8)) * 3)[labels] + rng.normal(size=(150, 8))).astype(np.float32)
    items = EmbeddingSet(x, labels=labels)
    return TaskData(train=items.subset(np.arange(0, 150, 2)), test=items.subset(np.arange(1, 150, 2)))


def _evaluate(data: TaskData, train: np.ndarray, test: np.ndarray, seed: int, extras: Any) -> EvalResult:
    assert data.train.labels is not None and data.test.labels is not None
    return classification_eval(train, data.train.labels, test, data.test.labels, seed=seed)


def _task(name: str, **behaviour: Any) -> Task:
    return Task(
        name=name,
        domain="hooktest",
        description="three blobs",
        source="numpy",
        load=_blobs,
        primary_metric="probe_acc",
        metrics=("probe_acc", "probe_macro_f1", "knn5_acc"),
        defaults={"epochs": 2, "batch_size": 32, "hidden_dim": 8, "projector_dim": 8, "patience": None},
        **behaviour,
    )


class Box:
    """A host object only :class:`HostPlugin` knows."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors


class HostPlugin:
    """Answers extract and attach for :class:`Box` hosts."""

    @hookimpl
    def simskip_extract_embeddings(self, source: Any, options: dict[str, Any]) -> EmbeddingSet | None:
        if not isinstance(source, Box):
            return None
        return EmbeddingSet(source.vectors, meta={"scale": options.get("scale", 1.0)})

    @hookimpl
    def simskip_attach(self, host: Any, model: Any) -> Any:
        if not isinstance(host, Box):
            return None
        return Box(model.transform(host.vectors))


class LegacyTaskPlugin:
    """A plugin written before tasks carried their behaviour: the task hooks answer its task; it also
    adds a method to every task and counts the hook calls."""

    def __init__(self) -> None:
        self.calls: dict[str, list[str]] = {"evaluate": [], "probe": [], "pairs": [], "methods": []}

    @hookimpl
    def simskip_register_tasks(self, register: Any) -> None:
        register(_task("hooktest/legacy"))
        register(
            _task(
                "hooktest/modern",
                evaluate=_evaluate,
                default_probe=lambda data: LabelProbe(data.train.labels),
                pair_signals=lambda data: {"own": np.array([[0, 1], [2, 3]])},
            )
        )

    @hookimpl
    def simskip_evaluate(
        self, task: Task, data: TaskData, train: np.ndarray, test: np.ndarray, seed: int
    ) -> Any:
        self.calls["evaluate"].append(task.name)
        return _evaluate(data, train, test, seed, {}) if task.name == "hooktest/legacy" else None

    @hookimpl
    def simskip_default_probe(self, task: Task, data: TaskData) -> Any:
        self.calls["probe"].append(task.name)
        return LabelProbe(data.train.labels) if task.name == "hooktest/legacy" else None

    @hookimpl
    def simskip_pair_signals(self, task: Task, data: TaskData) -> Any:
        self.calls["pairs"].append(task.name)
        return {"legacy": np.array([[0, 2], [1, 3]])}

    @hookimpl
    def simskip_task_methods(self, task: Task) -> list[Method]:
        self.calls["methods"].append(task.name)

        def run(task: Task, data: TaskData, seed: int, state: dict[str, Any]) -> MethodOutput:
            return MethodOutput(train=-data.train.vectors, test=-data.test.vectors)

        return [Method("negate", "baseline", False, run, stochastic=False, description="x -> -x")]


@pytest.fixture
def manager(monkeypatch: pytest.MonkeyPatch) -> pluggy.PluginManager:
    """A fresh plugin manager with no plugin: each test registers what it needs."""
    fresh = pluggy.PluginManager(hooks.PROJECT)
    fresh.add_hookspecs(hooks)
    monkeypatch.setattr(plugins, "_manager", fresh)
    return fresh


def test_extract_and_attach_ask_the_plugins(manager: pluggy.PluginManager) -> None:
    manager.register(HostPlugin(), name="host-test")
    x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    embeddings = simskip_core.extract(Box(x), scale=2.0)
    assert isinstance(embeddings, EmbeddingSet) and np.array_equal(embeddings.vectors, x)
    assert embeddings.meta == {"scale": 2.0}  # the options reach the plugin
    refiner = SimSkip(epochs=1, batch_size=32, progress=False).fit(x)
    attached = simskip_core.attach(Box(x), refiner)
    assert isinstance(attached, Box) and np.allclose(attached.vectors, refiner.transform(x))


def test_extract_and_attach_name_the_plugins_when_none_answers(manager: pluggy.PluginManager) -> None:
    manager.register(HostPlugin(), name="host-test")
    with pytest.raises(NoPluginError, match=r"extracts embeddings from a list.*plugins asked: host-test"):
        simskip_core.extract([1, 2, 3])
    with pytest.raises(NoPluginError, match=r"attaches a refiner to a .*Path.*plugins asked: host-test"):
        simskip_core.attach(Path("x"), None)


def test_extract_refuses_a_plugin_answer_that_is_not_an_embedding_set(manager: pluggy.PluginManager) -> None:
    class Broken:
        @hookimpl
        def simskip_extract_embeddings(self, source: Any, options: Any) -> Any:
            return np.zeros((2, 2))

    manager.register(Broken(), name="broken")
    with pytest.raises(TypeError, match="not an EmbeddingSet; the plugin is broken"):
        simskip_core.extract("anything")


def test_tasks_own_callables_win_and_the_hooks_are_the_fallback(
    manager: pluggy.PluginManager, tmp_path: Path
) -> None:
    legacy = LegacyTaskPlugin()
    manager.register(legacy, name="legacy")
    config = BenchConfig(
        out=tmp_path / "run",
        seeds=(0,),
        methods=("simskip-pairs", "simskip-auto", "negate"),
        quiet=True,
        plots=False,
        n_boot=100,
        cache_dir=tmp_path / "cache",
    )
    result = run_bench(config)
    assert result.failures == 0, result.run["failures"]
    cells = {(c["task"], c["method"]): c for c in result.run["cells"]}
    for name in ("hooktest/legacy", "hooktest/modern"):
        for method in ("identity", "simskip-pairs", "simskip-auto", "negate"):
            assert cells[(name, method)]["metrics"]["probe_acc"] > 0, (name, method)
    # the pair signals come from the task where it carries them, from the hook otherwise
    assert cells[("hooktest/modern", "simskip-pairs")]["info"]["signals"] == ["own"]
    assert cells[("hooktest/legacy", "simskip-pairs")]["info"]["signals"] == ["legacy"]
    # the task hooks were asked about the legacy task only; the methods hook about both
    for kind in ("evaluate", "probe", "pairs"):
        assert set(legacy.calls[kind]) == {"hooktest/legacy"}, kind
    assert set(legacy.calls["methods"]) == {"hooktest/legacy", "hooktest/modern"}


def test_a_task_nobody_evaluates_fails_its_cells_with_the_fix(
    manager: pluggy.PluginManager, tmp_path: Path
) -> None:
    class Bare:
        @hookimpl
        def simskip_register_tasks(self, register: Any) -> None:
            register(_task("hooktest/bare"))
            register(_task("hooktest/dict", evaluate=lambda *args: {"probe_acc": 1.0}))

    manager.register(Bare(), name="bare")
    config = BenchConfig(
        out=tmp_path / "run", seeds=(0,), methods=("identity",), quiet=True, plots=False, n_boot=100
    )
    result = run_bench(config)
    assert result.failures == 2
    reasons = {f["task"]: f["reason"] for f in result.run["failures"]}
    assert (
        "carries no evaluate" in reasons["hooktest/bare"] and "evaluate=callable" in reasons["hooktest/bare"]
    )
    assert "returned dict, not an EvalResult" in reasons["hooktest/dict"]


def test_task_methods_must_be_methods(manager: pluggy.PluginManager) -> None:
    from simskip_core.bench.config import task_methods

    bad = _task("hooktest/bad", evaluate=_evaluate, methods=("not a method",))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Task\.methods for hooktest/bad holds str, not a Method"):
        task_methods(bad)
    clash = Method("identity", "baseline", False, lambda *a: None)
    with pytest.raises(ValueError, match="two methods named 'identity'"):
        task_methods(_task("hooktest/clash", methods=(clash,)))


# ----------------------------------------------------------------- losses and augmentations by entry point
class HookspecTestLoss(ContrastiveLoss):
    """Mean squared distance of the two views (a toy loss registered by :class:`ExtensionPlugin`)."""

    def forward(
        self, z_a: Any, z_b: Any, *, positives: Any = None, features: Any = None, signals: Any = None
    ) -> Any:
        return ((z_a - z_b) ** 2).sum(1).mean()


class HookspecTestShift(Augmentation):
    """Adds 0.1 to every feature (a toy augmentation registered by :class:`ExtensionPlugin`)."""

    def __call__(self, x: Any, generator: Any) -> Any:
        return x + 0.1


class ExtensionPlugin:
    """Registers a loss and an augmentation; installed through an entry point by :func:`extension_plugin`."""

    @hookimpl
    def simskip_register_losses(self, register: Any) -> None:
        register(HookspecTestLoss)

    @hookimpl
    def simskip_register_augmentations(self, register: Any) -> None:
        register(HookspecTestShift)


EXTENSION_PLUGIN = ExtensionPlugin()


@pytest.fixture
def extension_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """:data:`EXTENSION_PLUGIN` installed the way pip would (a dist-info with an entry point into this
    module); the plugin manager is rebuilt, and the classes are removed from the resolvers afterwards."""
    from simskip_core.augment import augmentation_resolver
    from simskip_core.losses import loss_resolver

    dist = tmp_path / "simskip_hookspec_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: simskip-hookspec-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[simskip]\nhookspec-test = {__name__}:EXTENSION_PLUGIN\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(plugins.AUTOLOAD_ENV, raising=False)
    plugins.reset_plugin_manager()
    yield
    plugins.reset_plugin_manager()
    for resolver, key in ((loss_resolver, "hookspectest"), (augmentation_resolver, "hookspectestshift")):
        resolver.lookup_dict.pop(key, None)


def test_plugins_register_losses_and_augmentations(extension_plugin: None) -> None:
    from simskip_core.augment import augmentation_resolver
    from simskip_core.losses import loss_resolver

    assert plugins.get_plugin_manager().get_plugin("hookspec-test") is EXTENSION_PLUGIN
    assert loss_resolver.lookup("hookspectest").__name__ == "HookspecTestLoss"
    assert augmentation_resolver.lookup("hookspectestshift").__name__ == "HookspecTestShift"
    x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    model = SimSkip(
        loss="hookspectest", augment=["hookspectestshift"], epochs=1, batch_size=32, progress=False
    )
    assert model.fit(x).transform(x).shape == x.shape


# ------------------------------------------------------------------------------- Probe is a Protocol
def test_probe_is_a_runtime_checkable_protocol_with_uses_labels() -> None:
    class Scorer:
        uses_labels = False

        def __call__(self, z: np.ndarray, split_seed: int) -> float:
            return float(split_seed)

    labels = np.arange(20) % 2
    assert isinstance(LabelProbe(labels), Probe) and LabelProbe(labels).uses_labels is True
    assert isinstance(Scorer(), Probe)
    assert not isinstance(lambda z, s: 0.0, Probe)  # a bare callable does not say whether it reads labels


# ------------------------------------------------------------------- the core entries with real plugins
@pytest.fixture(scope="module")
def minilm() -> Any:
    from simskip_text import load_default_model

    return load_default_model()


@pytest.fixture
def real_plugins() -> Iterator[None]:
    plugins.reset_plugin_manager()
    yield
    plugins.reset_plugin_manager()


def test_extract_and_attach_with_sentence_transformers(minilm: Any, real_plugins: None) -> None:
    from simskip_text.module import SimSkipStage

    texts = [f"sentence number {i} about {'cats' if i % 2 else 'markets'}" for i in range(48)]
    embeddings = simskip_core.extract({"texts": texts, "model": minilm}, batch_size=16, progress=False)
    assert embeddings.vectors.shape == (48, 384) and list(embeddings.ids) == texts
    assert np.allclose(embeddings.vectors[:4], minilm.encode(texts[:4]), atol=1e-5)
    refiner = SimSkip(epochs=2, batch_size=16, progress=False, normalize_output=True).fit(embeddings.vectors)
    refined = simskip_core.attach(minilm, refiner)
    assert isinstance(refined[-1], SimSkipStage) and not isinstance(minilm[-1], SimSkipStage)
    assert np.allclose(refined.encode(texts[:4]), refiner.transform(embeddings.vectors[:4]), atol=1e-5)
    with pytest.raises(NoPluginError, match=r"plugins asked: .*text"):
        simskip_core.attach(object(), refiner)


def test_extract_and_attach_with_a_pyg_graph(real_plugins: None) -> None:
    import torch
    from torch_geometric.data import Data

    x = torch.randn(30, 6, generator=torch.Generator().manual_seed(0))
    edge_index = torch.tensor(
        [[i for i in range(29)] + [i + 1 for i in range(29)], [i + 1 for i in range(29)] + list(range(29))]
    )
    graph = Data(x=x, edge_index=edge_index, y=torch.arange(30) % 2)
    embeddings = simskip_core.extract(graph)
    assert embeddings.vectors.shape == (30, 6) and len(embeddings.pairs["edges"]) == 29
    refiner = SimSkip(epochs=1, batch_size=16, progress=False).fit(embeddings.vectors)
    attached = simskip_core.attach(graph, refiner)
    assert np.allclose(attached.x.numpy(), refiner.transform(x.numpy()), atol=1e-6)
    assert torch.equal(graph.x, x)  # the host is left unchanged


def test_extract_and_attach_with_a_pykeen_model(real_plugins: None) -> None:
    from pykeen.datasets import Nations
    from pykeen.models import ComplEx
    from simskip_kg.embeddings import extract_entity_vectors

    nations = Nations()
    model = ComplEx(triples_factory=nations.training, embedding_dim=8, random_seed=0)
    entities = simskip_core.extract(model, dataset=nations)
    assert entities.vectors.shape == (14, 16) and entities.ids[nations.training.entity_to_id["usa"]] == "usa"
    assert len(entities.pairs["kg_neighbours"]) > 0
    refiner = SimSkip(epochs=1, batch_size=8, progress=False).fit(entities.vectors)
    refined = simskip_core.attach(model, refiner)
    assert np.allclose(extract_entity_vectors(refined)[0], refiner.transform(entities.vectors), atol=1e-6)
    assert np.array_equal(extract_entity_vectors(model)[0], entities.vectors)  # the host is left unchanged


def test_the_example_plugins_task_carries_its_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/example_plugin shows third parties the new way: its task has ``evaluate``, no evaluate hook."""
    monkeypatch.syspath_prepend(str(ROOT / "docs" / "example_plugin"))
    try:
        from simskip_example import plugin as example

        assert not hasattr(example, "simskip_evaluate")
        data = example.TASK.load(LoadOptions(progress=False))
        assert example.TASK.evaluate is not None
        result = example.TASK.evaluate(data, data.train.vectors, data.test.vectors, 0, {})
    finally:  # imported from docs/ for this test only
        for name in [m for m in sys.modules if m.startswith("simskip_example")]:
            del sys.modules[name]
    assert set(result.metrics) == set(example.TASK.metrics) and result.metrics["probe_acc"] > 0.9
