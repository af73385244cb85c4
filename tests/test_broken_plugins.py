"""A broken third-party plugin never takes simskip down.

Each plugin below is installed the way pip would install it (a module plus a ``dist-info`` folder with
its entry point, on ``sys.path``), so ``importlib.metadata`` finds it, and its distribution, for real.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pluggy
import pytest

from simskip_core import plugins
from simskip_core.cli import main
from simskip_core.plugins import (
    BUILTIN_PLUGINS,
    all_tasks,
    get_plugin_manager,
    installed_plugins,
    reset_plugin_manager,
)

GOOD = """
from simskip_core import hookimpl
from simskip_core.tasks import Task


@hookimpl
def simskip_register_tasks(register):
    register(Task("good/one", "good", "d", "s", lambda options: None, "acc", ("acc",)))
"""

#: module source -> (status the plugin gets, what the status names)
BROKEN = {
    "runtime": ('raise RuntimeError("boom at import")\n', "failed on import (RuntimeError: boom at import)"),
    "syntax": ("def broken(:\n    pass\n", "failed on import (SyntaxError: "),
    "exits": ("import sys\nsys.exit(3)\n", "failed on import (SystemExit: 3)"),
    "missinghost": ("import simskip_no_such_host_library\n", "not loaded (ModuleNotFoundError: "),
    "misspelt": (
        "from simskip_core import hookimpl\n\n@hookimpl\ndef simskip_register_task(register):\n    pass\n",
        "failed on registration (PluginValidationError: ",
    ),
    "badsignature": (
        "from simskip_core import hookimpl\n\n@hookimpl\ndef simskip_register_tasks(register, extra):\n    pass\n",
        "failed on registration (PluginValidationError: ",
    ),
    "raisesinhook": (
        "from simskip_core import hookimpl\n\n@hookimpl\ndef simskip_register_losses(register):\n"
        "    raise ValueError('cannot register')\n",
        "failed in simskip_register_losses (ValueError: cannot register)",
    ),
}


def _install(root: Path, name: str, source: str, version: str = "1.2.3") -> None:
    """Install module ``simskip_t_<name>`` as distribution ``simskip-t-<name>`` with entry point ``<name>``."""
    module = f"simskip_t_{name}"
    (root / f"{module}.py").write_text(source)
    dist = root / f"{module}-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: simskip-t-{name}\nVersion: {version}\n")
    (dist / "entry_points.txt").write_text(f"[simskip]\n{name} = {module}\n")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on ``sys.path`` to install plugins into; a fresh plugin manager before and after."""
    monkeypatch.syspath_prepend(str(tmp_path))
    reset_plugin_manager()
    yield tmp_path
    reset_plugin_manager()
    for name in [m for m in sys.modules if m.startswith("simskip_t_")]:
        del sys.modules[name]


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_a_broken_plugin_is_left_out_and_reported(site: Path, kind: str, caplog) -> None:
    source, status = BROKEN[kind]
    _install(site, kind, source)
    _install(site, "good", GOOD)
    with caplog.at_level(logging.INFO, logger="simskip_core.plugins"):
        manager = get_plugin_manager()
    assert manager.get_plugin(kind) is None
    assert all(manager.get_plugin(name) is not None for name in {*BUILTIN_PLUGINS, "good"})
    rows = {row["name"]: row for row in installed_plugins()}
    assert rows[kind]["status"].startswith(status), rows[kind]
    assert rows[kind]["distribution"] == f"simskip-t-{kind} 1.2.3"
    assert rows["good"]["status"] == "loaded"
    assert any(
        kind in record.getMessage() and "simskip-t-" in record.getMessage() for record in caplog.records
    )
    assert "good/one" in all_tasks()


def test_plugins_command_shows_the_failure_with_the_distribution(site: Path, capsys) -> None:
    _install(site, "runtime", BROKEN["runtime"][0], version="0.9.1")
    assert main(["plugins"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "simskip-t-runtime 0.9.1" in out and "RuntimeError: boom at import" in out
    assert "text" in out and "graph" in out


def test_bench_lists_tasks_despite_a_broken_plugin(site: Path, capsys) -> None:
    _install(site, "syntax", BROKEN["syntax"][0])
    _install(site, "good", GOOD)
    assert main(["bench", "--list", "--domain", "good"]) == 0
    assert "good/one" in capsys.readouterr().out


def test_a_task_hook_that_raises_or_clashes_registers_nothing(site: Path) -> None:
    builtin = next(
        iter(all_tasks())
    )  # a task of a built-in plugin (called before the plugins installed here)
    reset_plugin_manager()
    _install(site, "good", GOOD)
    clash = GOOD.replace(
        '    register(Task("good/one"',
        f'    register(Task("clash/own", "x", "d", "s", None, "a", ("a",)))\n    register(Task({builtin!r}',
    )
    _install(site, "clash", clash)
    raises = (
        "from simskip_core import hookimpl\n\n@hookimpl\ndef simskip_register_tasks(register):\n    1 / 0\n"
    )
    _install(site, "zerodiv", raises)
    tasks = all_tasks()
    assert tasks[builtin].domain != "good" and "good/one" in tasks and "clash/own" not in tasks
    rows = {row["name"]: row["status"] for row in installed_plugins()}
    assert f"two plugins register a task named {builtin!r}" in rows["clash"]
    assert "ZeroDivisionError" in rows["zerodiv"]
    assert rows["good"] == "loaded"


def test_a_plugin_looking_up_a_name_while_loading_creates_no_second_manager(site: Path, monkeypatch) -> None:
    created: list[pluggy.PluginManager] = []

    class Counting(pluggy.PluginManager):
        def __init__(self, project_name: str) -> None:
            super().__init__(project_name)
            created.append(self)

    monkeypatch.setattr(plugins.pluggy, "PluginManager", Counting)
    _install(
        site, "eager", "from simskip_core.losses import loss_resolver\nloss_resolver.lookup('eagerloss')\n"
    )
    manager = get_plugin_manager()
    assert created == [manager]
    status = {row["name"]: row["status"] for row in installed_plugins()}["eager"]
    assert status.startswith("failed on import (UnknownNameError: unknown loss 'eagerloss'; valid names: ")
