"""The plugin host: hook documentation, run-time registration, entry-point discovery, autoload switch."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pluggy
import pytest

from simskip_core import SimSkip, hooks
from simskip_core.augment import augmentation_resolver
from simskip_core.losses import loss_resolver
from simskip_core.plugins import (
    AUTOLOAD_ENV,
    BUILTIN_PLUGINS,
    all_tasks,
    get_plugin_manager,
    installed_plugins,
    reset_plugin_manager,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "example_plugin"


@pytest.fixture
def fresh_manager() -> Iterator[None]:
    reset_plugin_manager()
    yield
    reset_plugin_manager()


@pytest.fixture
def example_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Install the example plugin the way pip would: its source plus a dist-info with entry points."""
    dist = tmp_path / "simskip_example-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: simskip-example\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[simskip]\nexample = simskip_example.plugin\n")
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("simskip_example")]:
        del sys.modules[name]


def test_every_hook_has_a_docstring_and_is_documented() -> None:
    page = (ROOT / "docs" / "hooks.md").read_text()
    names = hooks.hook_names()
    assert len(names) >= 9
    for name in names:
        spec = getattr(hooks, name)
        assert inspect.getdoc(spec), f"hook {name} has no docstring"
        assert f"## `{name}(" in page, f"hook {name} is not documented in docs/hooks.md"


def test_firstresult_hooks() -> None:
    first = {name for name in hooks.hook_names() if getattr(hooks, name).simskip_spec.get("firstresult")}
    assert first == {
        "simskip_extract_embeddings",
        "simskip_evaluate",
        "simskip_default_probe",
        "simskip_attach",
    }


def test_builtin_plugins_register_through_entry_points(fresh_manager) -> None:
    names = {ep.name: ep.value for ep in entry_points(group="simskip")}
    assert set(names) >= BUILTIN_PLUGINS
    manager = get_plugin_manager()
    for name in BUILTIN_PLUGINS:
        assert manager.get_plugin(name) is not None, installed_plugins()


def test_runtime_registration_of_a_task_plugin(fresh_manager) -> None:
    from simskip_core.tasks import Task

    class Plugin:
        @hooks.hookimpl
        def simskip_register_tasks(self, register):
            register(Task("toy/one", "toy", "d", "s", lambda o: None, "acc", ("acc",)))

    manager = get_plugin_manager()
    manager.register(Plugin(), name="toy")
    assert "toy/one" in all_tasks()
    assert any(
        row["name"] == "toy" and row["status"] == "registered at run time" for row in installed_plugins()
    )


def test_misspelt_hook_is_caught(fresh_manager) -> None:
    class Broken:
        @hooks.hookimpl
        def simskip_register_task(self, register):  # missing "s"
            pass

    manager = get_plugin_manager()
    manager.register(Broken())
    with pytest.raises(pluggy.PluginValidationError):
        manager.check_pending()


def test_third_party_entry_point_is_discovered_and_extends_resolvers(
    fresh_manager, example_installed
) -> None:
    manager = get_plugin_manager()
    assert manager.get_plugin("example") is not None
    assert "example/blobs" in all_tasks()
    assert loss_resolver.lookup("cosinealign").__name__ == "CosineAlignLoss"
    assert augmentation_resolver.lookup("signflip").__name__ == "SignFlip"
    x = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
    model = SimSkip(loss="cosinealign", augment=["signflip"], epochs=1, batch_size=32, progress=False).fit(x)
    assert model.transform(x).shape == x.shape


def test_autoload_switch_skips_third_party_plugins(fresh_manager, example_installed, monkeypatch) -> None:
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    manager = get_plugin_manager()
    assert manager.get_plugin("example") is None
    assert all(manager.get_plugin(name) is not None for name in BUILTIN_PLUGINS)
    rows = {row["name"]: row["status"] for row in installed_plugins()}
    assert rows["example"].startswith("disabled")


@pytest.mark.parametrize(
    ("package", "host"), [("simskip_text", "sentence_transformers"), ("simskip_kg", "pykeen")]
)
def test_plugin_packages_import_their_host_library_lazily(package: str, host: str) -> None:
    import subprocess

    code = (
        f"import sys, {package}; assert {host!r} not in sys.modules, 'eager import'; "
        f"assert all(callable(getattr({package}, name)) for name in dir({package}))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        __import__(package).nope  # noqa: B018
