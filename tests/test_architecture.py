"""The import rules of docs/architecture.md, checked on the source: no circle, no upward or private import.

Imports are read with :mod:`ast` (module level and inside functions; ``if TYPE_CHECKING:`` blocks are
skipped), so a rule is checked whether or not the import runs in a test.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "simskip_core"
PLUGINS = ROOT / "plugins"

#: Deprecated aliases of moved modules (they import their new home and nothing else).
ALIASES = {
    f"simskip_core.{name}" for name in ("stream", "distributed", "report", "select", "stats", "methods")
}
#: The engine: what ``from simskip_core import SimSkip`` needs. It imports no host library, no plotting,
#: nothing of ``bench`` and nothing of ``scale`` but the trainer's seam.
ENGINE = {
    "simskip_core.api",
    "simskip_core.train",
    "simskip_core.refiner",
    "simskip_core.augment",
    "simskip_core.pairs",
    "simskip_core.baselines",
    "simskip_core.selection",
    "simskip_core.apply",
    "simskip_core.validation",
    "simskip_core.serialization",
    "simskip_core.embeddings",
    "simskip_core.errors",
    "simskip_core.lazy",
    "simskip_core.progress",
    "simskip_core.criteria",
}
HOST_LIBRARIES = (
    "sentence_transformers",
    "pykeen",
    "torch_geometric",
    "timm",
    "torchvision",
    "transformers",
    "mteb",
)
#: Imports done inside a function on purpose, to cross a layer the other way; each is documented in
#: docs/architecture.md ("seams"). Every other import must respect the layering.
SEAMS = {
    ("simskip_core.train", "simskip_core.scale.distributed"),
    ("simskip_core.augment", "simskip_core.plugins"),
}


def _module_name(path: Path, base: Path) -> str:
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, name: str) -> list[tuple[str, str | None]]:
    """(module, imported name or None) for every import in ``path``, outside ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, str | None]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for orelse in child.orelse:
                    visit(orelse)
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, None) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                module = child.module or ""
                if child.level:
                    base = package.rsplit(".", child.level - 1)[0] if child.level > 1 else package
                    module = f"{base}.{module}" if module else base
                found.extend((module, alias.name) for alias in child.names)
            visit(child)

    visit(tree)
    return found


def _core_modules() -> dict[str, Path]:
    return {_module_name(p, ROOT): p for p in CORE.rglob("*.py")}


def _targets(path: Path, name: str, modules: dict[str, Path]) -> list[str]:
    """The modules ``path`` imports (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    targets = []
    for module, imported in _imports(path, name):
        submodule = f"{module}.{imported}"
        targets.append(submodule if imported and submodule in modules else module)
    return targets


def _core_graph() -> dict[str, set[str]]:
    modules = _core_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        if name in ALIASES:
            continue
        edges = set()
        for target in _targets(path, name, modules):
            # importing a submodule imports its package first; a package's own __init__ is not a dependency
            inside = name.startswith(target + ".")
            if target in modules and target != name and (name, target) not in SEAMS and not inside:
                edges.add(target)
        graph[name] = edges
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle_in_the_core() -> None:
    cycle = _find_cycle(_core_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("name", sorted(ENGINE))
def test_the_engine_imports_no_host_library_plotting_bench_or_cli(name: str) -> None:
    modules = _core_modules()
    for module in _targets(modules[name], name, modules):
        top = module.split(".")[0]
        assert top not in HOST_LIBRARIES, f"{name} imports the host library {module}"
        assert top != "matplotlib", f"{name} imports matplotlib"
        assert not module.startswith(("simskip_core.bench", "simskip_core.cli")), f"{name} imports {module}"
        if module.startswith("simskip_core.scale"):
            assert (name, module) in SEAMS, f"{name} imports {module} outside the documented seams"


def test_nothing_below_bench_imports_bench() -> None:
    for name, path in _core_modules().items():
        if name.startswith(("simskip_core.bench", "simskip_core.cli")) or name in ALIASES:
            continue
        for module, _ in _imports(path, name):
            assert not module.startswith("simskip_core.bench"), f"{name} imports {module} (upward)"


def _plugin_files() -> list[tuple[str, Path]]:
    return [(_module_name(p, PLUGINS), p) for p in sorted(PLUGINS.rglob("*.py"))]


@pytest.mark.parametrize(("name", "path"), _plugin_files(), ids=[n for n, _ in _plugin_files()])
def test_plugins_import_only_public_core_names_and_no_other_plugin(name: str, path: Path) -> None:
    own = name.split(".")[0]
    for module, imported in _imports(path, name):
        if module.startswith("simskip_core"):
            assert not any(part.startswith("_") for part in module.split(".")), f"{name} imports {module}"
            private = imported is not None and imported.startswith("_") and not imported.startswith("__")
            assert not private, f"{name} imports {module}.{imported}"
        top = module.split(".")[0]
        if top.startswith("simskip_") and top != "simskip_core":
            assert top == own, f"{name} imports another plugin ({module})"


def test_importing_the_engine_stays_light() -> None:
    code = (
        "import sys; from simskip_core import SimSkip; SimSkip; "
        "heavy = [m for m in ('matplotlib', 'sklearn.linear_model', 'sklearn.neighbors', 'sklearn.manifold', "
        "'sentence_transformers', 'pykeen', 'torch_geometric', 'timm', 'simskip_core.bench') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing SimSkip imported {out.stdout.strip()}"


def test_help_imports_neither_torch_nor_the_bench_runner() -> None:
    code = (
        "import sys, contextlib, io\n"
        "from simskip_core.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit): main(['--help'])\n"
        "print(','.join(m for m in ('torch', 'simskip_core.bench.runner', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"simskip --help imported {out.stdout.strip()}"
