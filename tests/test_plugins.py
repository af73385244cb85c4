"""The plugin host: hook documentation, run-time registration, entry-point discovery, autoload switch."""

from __future__ import annotations

import inspect
import os
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


@pytest.fixture
def builtin_resolvers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loss and augmentation resolvers as a fresh process has them: no plugin class registered yet."""
    for resolver in (loss_resolver, augmentation_resolver):
        for attribute in ("lookup_dict", "synonyms"):
            own = {
                k: v
                for k, v in getattr(resolver, attribute).items()
                if v.__module__.startswith("simskip_core")
            }
            monkeypatch.setattr(resolver, attribute, own)


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
        f"assert all(getattr({package}, name) is not None for name in dir({package}))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        __import__(package).nope  # noqa: B018


def test_plugin_names_are_found_before_the_plugin_manager_exists(
    fresh_manager, example_installed, builtin_resolvers
) -> None:
    x = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
    model = SimSkip(loss="cosinealign", augment=["signflip"], epochs=1, batch_size=32, progress=False).fit(x)
    assert model.transform(x).shape == x.shape


def test_refine_command_trains_with_a_plugin_loss(
    fresh_manager, example_installed, builtin_resolvers
) -> None:
    from simskip_core.cli import main

    np.save(example_installed / "in.npy", np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32))
    args = ["refine", str(example_installed / "in.npy"), str(example_installed / "out.npy")]
    assert main([*args, "--loss", "cosinealign", "--epochs", "1", "--batch-size", "32", "--quiet"]) == 0
    assert np.load(example_installed / "out.npy").shape == (200, 8)


def test_a_model_saved_with_a_plugin_augmentation_loads_in_a_fresh_process(
    fresh_manager, example_installed
) -> None:
    import subprocess

    x = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
    SimSkip(augment=["signflip"], epochs=1, batch_size=32, progress=False).fit(x).save(
        example_installed / "m"
    )
    code = (
        "import sys; from simskip_core import SimSkip; model = SimSkip.load(sys.argv[1]); print(repr(model)); "
        "model.save(sys.argv[2]); print(SimSkip.load(sys.argv[2]).config_dict()['augment'])"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(example_installed), str(EXAMPLE)])}
    env.pop(AUTOLOAD_ENV, None)
    out = subprocess.run(
        [sys.executable, "-c", code, str(example_installed / "m"), str(example_installed / "again")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("SimSkip(loss='ntxent'") and "[['signflip', {'p': 0.1}]]" in out.stdout


def test_an_unknown_name_lists_the_valid_names_after_loading_the_plugins(
    fresh_manager, example_installed, builtin_resolvers
) -> None:
    with pytest.raises(KeyError) as info:
        loss_resolver.lookup("nope")
    message = str(info.value)
    assert message.startswith("unknown loss 'nope'; valid names: ") and "cosinealign" in message
    assert "ntxent" in message and "simskip_register_losses" in message


def test_the_name_fallback_honours_the_autoload_switch(
    fresh_manager, example_installed, builtin_resolvers, monkeypatch
) -> None:
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    with pytest.raises(KeyError, match="unknown augmentation 'signflip'; valid names: featuremask, "):
        augmentation_resolver.lookup("signflip")
    assert get_plugin_manager().get_plugin("example") is None
