"""The plugin host: a pluggy manager that loads plugins from the ``simskip`` entry-point group.

Set ``SIMSKIP_DISABLE_PLUGIN_AUTOLOAD=1`` to load only the built-in plugins (those shipped in this
distribution); third-party plugins can then be registered by hand with ``get_plugin_manager().register``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

import pluggy

from simskip_core import hooks
from simskip_core.augment import augmentation_resolver
from simskip_core.losses import loss_resolver

__all__ = [
    "AUTOLOAD_ENV",
    "BUILTIN_PLUGINS",
    "all_tasks",
    "get_plugin_manager",
    "installed_plugins",
    "reset_plugin_manager",
]

#: Environment variable that turns off loading of third-party entry points.
AUTOLOAD_ENV = "SIMSKIP_DISABLE_PLUGIN_AUTOLOAD"
#: Entry-point names of the plugins that ship with simskip.
BUILTIN_PLUGINS = frozenset({"text", "graph", "kg", "vision"})
ENTRY_POINT_GROUP = hooks.PROJECT

_manager: pluggy.PluginManager | None = None


def _autoload_disabled() -> bool:
    return os.environ.get(AUTOLOAD_ENV, "").strip().lower() not in {"", "0", "false", "no"}


def _register_extensions(manager: pluggy.PluginManager) -> None:
    def register_with(resolver: Any) -> Callable[[type], None]:
        def register(cls: type) -> None:
            if cls not in resolver.lookup_dict.values():
                resolver.register(cls, raise_on_conflict=False)

        return register

    manager.hook.simskip_register_losses(register=register_with(loss_resolver))
    manager.hook.simskip_register_augmentations(register=register_with(augmentation_resolver))


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, created on first use.

    Entry points of the group ``simskip`` are loaded (only the built-in ones when the
    ``SIMSKIP_DISABLE_PLUGIN_AUTOLOAD`` environment variable is set); a plugin whose host library
    is not installed is skipped, and reported by :func:`installed_plugins`. Loss and augmentation
    classes that plugins register become resolvable by name. ``check_pending()`` guards against
    misspelt hook implementations.
    """
    global _manager
    if _manager is None:
        manager = pluggy.PluginManager(hooks.PROJECT)
        manager.add_hookspecs(hooks)
        disabled = _autoload_disabled()
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if disabled and ep.name not in BUILTIN_PLUGINS:
                continue
            if manager.get_plugin(ep.name) is not None or manager.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
            except ImportError as error:
                _load_errors[ep.name] = f"{type(error).__name__}: {error}"
                continue
            manager.register(plugin, name=ep.name)
        manager.check_pending()
        _register_extensions(manager)
        _manager = manager
    return _manager


_load_errors: dict[str, str] = {}


def reset_plugin_manager() -> None:
    """Forget the manager so the next :func:`get_plugin_manager` call reloads entry points (for tests)."""
    global _manager
    _manager = None
    _load_errors.clear()


def installed_plugins() -> list[dict[str, str]]:
    """One row per plugin entry point: name, module, status ("loaded", "failed: ...", "disabled")."""
    manager = get_plugin_manager()
    rows = []
    seen = set()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        seen.add(ep.name)
        if manager.get_plugin(ep.name) is not None:
            status = "loaded"
        elif ep.name in _load_errors:
            status = f"not loaded ({_load_errors[ep.name]})"
        else:
            status = f"disabled ({AUTOLOAD_ENV} is set)"
        rows.append({"name": ep.name, "module": ep.value, "status": status})
    for name, plugin in manager.list_name_plugin():
        if name not in seen:
            rows.append(
                {
                    "name": name,
                    "module": getattr(plugin, "__name__", repr(plugin)),
                    "status": "registered at run time",
                }
            )
    return rows


def all_tasks() -> dict[str, Any]:
    """Every task that loaded plugins register, by name; duplicate names are an error."""
    tasks: dict[str, Any] = {}

    def register(task: Any) -> None:
        if task.name in tasks:
            raise ValueError(f"two plugins register a task named {task.name!r}; task names must be unique.")
        tasks[task.name] = task

    get_plugin_manager().hook.simskip_register_tasks(register=register)
    return dict(sorted(tasks.items()))
