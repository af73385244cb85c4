"""The plugin host: a pluggy manager that loads plugins from the ``simskip`` entry-point group.

Set ``SIMSKIP_DISABLE_PLUGIN_AUTOLOAD=1`` to load only the built-in plugins (those shipped in this
distribution); third-party plugins can then be registered by hand with ``get_plugin_manager().register``.

A broken plugin never takes simskip down: an exception while importing or registering a plugin
(including a misspelt hook name, pluggy's ``PluginValidationError``) or inside one of its registration
hooks is logged, the plugin is left out, and :func:`installed_plugins` reports the failure with the
plugin's distribution name and version.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
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

logger = logging.getLogger(__name__)

#: Environment variable that turns off loading of third-party entry points.
AUTOLOAD_ENV = "SIMSKIP_DISABLE_PLUGIN_AUTOLOAD"
#: Entry-point names of the plugins that ship with simskip.
BUILTIN_PLUGINS = frozenset({"text", "graph", "kg", "vision"})
ENTRY_POINT_GROUP = hooks.PROJECT

_manager: pluggy.PluginManager | None = None
#: The manager while :func:`get_plugin_manager` loads the entry points (None otherwise).
_building: pluggy.PluginManager | None = None
#: Plugin name -> why it is left out ("not loaded (ImportError: ...)", "failed on import (RuntimeError: ...)").
_load_errors: dict[str, str] = {}


def _autoload_disabled() -> bool:
    return os.environ.get(AUTOLOAD_ENV, "").strip().lower() not in {"", "0", "false", "no"}


def _distribution(ep: EntryPoint | None) -> str:
    """``"name version"`` of the distribution that declares ``ep`` ("-" when unknown)."""
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "-"
    try:
        return f"{dist.name} {dist.version}"
    except Exception:  # a distribution with broken metadata must not break the listing
        return "-"


def _record_failure(name: str, error: BaseException, where: str, distribution: str = "-") -> None:
    """Remember why plugin ``name`` is left out and log it (a missing host library is only info)."""
    if isinstance(error, ImportError):
        _load_errors[name] = f"not loaded ({type(error).__name__}: {error})"
        logger.info("simskip plugin %r (%s) not loaded: %s", name, distribution, error)
        return
    _load_errors[name] = f"failed {where} ({type(error).__name__}: {error})"
    logger.warning(
        "simskip plugin %r (%s) failed %s and is left out: %s: %s",
        name,
        distribution,
        where,
        type(error).__name__,
        error,
    )
    logger.debug("traceback of plugin %r's failure", name, exc_info=error)


def _load_entry_point(manager: pluggy.PluginManager, ep: EntryPoint) -> None:
    """Import and register one entry point; any failure leaves it out and is recorded."""
    where = "on import"
    try:
        plugin = ep.load()
        where = "on registration"
        manager.register(plugin, name=ep.name)
        manager.check_pending()  # earlier plugins passed this check: a failure is this plugin's
    except (Exception, SystemExit) as error:
        if manager.get_plugin(ep.name) is not None:
            manager.unregister(name=ep.name)
        _record_failure(ep.name, error, where, _distribution(ep))


def _plugins_in_call_order(manager: pluggy.PluginManager, hook_name: str) -> list[str]:
    """Names of the plugins implementing ``hook_name``, in the order pluggy calls them."""
    names: list[str] = []
    for impl in reversed(getattr(manager.hook, hook_name).get_hookimpls()):
        if impl.plugin_name not in names:
            names.append(impl.plugin_name)
    return names


def _call_each(
    manager: pluggy.PluginManager,
    hook_name: str,
    make_kwargs: Callable[[], tuple[dict[str, Any], Callable[[], None]]],
) -> None:
    """Call a registration hook plugin by plugin; a plugin whose implementation raises is unregistered.

    ``make_kwargs()`` gives the hook's arguments for one plugin and a ``commit`` callback, run only when
    that plugin's call succeeded (so a failing plugin registers nothing).
    """
    for name in _plugins_in_call_order(manager, hook_name):
        plugin = manager.get_plugin(name)
        others = [p for n, p in manager.list_name_plugin() if n != name]
        kwargs, commit = make_kwargs()
        try:
            manager.subset_hook_caller(hook_name, remove_plugins=others)(**kwargs)
        except Exception as error:
            manager.unregister(plugin, name=name)
            _record_failure(name, error, f"in {hook_name}", _distribution(_entry_point(name)))
            continue
        commit()


def _entry_point(name: str) -> EntryPoint | None:
    return next((ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name), None)


def _register_into(resolver: Any) -> Callable[[], tuple[dict[str, Any], Callable[[], None]]]:
    def make_kwargs() -> tuple[dict[str, Any], Callable[[], None]]:
        pending: list[type] = []

        def commit() -> None:
            for cls in pending:
                if cls not in resolver.lookup_dict.values():
                    resolver.register(cls, raise_on_conflict=False)

        return {"register": pending.append}, commit

    return make_kwargs


def _register_extensions(manager: pluggy.PluginManager) -> None:
    _call_each(manager, "simskip_register_losses", _register_into(loss_resolver))
    _call_each(manager, "simskip_register_augmentations", _register_into(augmentation_resolver))


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, created on first use.

    Entry points of the group ``simskip`` are loaded (only the built-in ones when the
    ``SIMSKIP_DISABLE_PLUGIN_AUTOLOAD`` environment variable is set). A plugin whose host library is
    not installed, or that fails in any way while it is imported, registered (e.g. a misspelt hook
    name) or registers its losses and augmentations, is left out, logged and reported by
    :func:`installed_plugins`; the other plugins load as usual. Loss and augmentation classes that
    plugins register become resolvable by name. A call made while the plugins load (a plugin that
    looks a name up on import) gets the manager being built; no second one is made.
    """
    global _manager, _building
    if _manager is not None:
        return _manager
    if _building is not None:
        return _building
    manager = _building = pluggy.PluginManager(hooks.PROJECT)
    try:
        manager.add_hookspecs(hooks)
        disabled = _autoload_disabled()
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if disabled and ep.name not in BUILTIN_PLUGINS:
                continue
            if manager.get_plugin(ep.name) is not None or manager.is_blocked(ep.name):
                continue
            _load_entry_point(manager, ep)
        _register_extensions(manager)
        _manager = manager
    finally:
        _building = None
    return manager


def reset_plugin_manager() -> None:
    """Forget the manager so the next :func:`get_plugin_manager` call reloads entry points (for tests)."""
    global _manager
    _manager = None
    _load_errors.clear()


def installed_plugins() -> list[dict[str, str]]:
    """One row per plugin: name, module, distribution ("name version") and status.

    The status is "loaded", "registered at run time", "disabled (...)", "not loaded (...)" (its host
    library is missing) or "failed ... (...)" (it raised while being imported, registered or called).
    """
    manager = get_plugin_manager()
    rows = []
    seen = set()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        seen.add(ep.name)
        if manager.get_plugin(ep.name) is not None:
            status = "loaded"
        elif ep.name in _load_errors:
            status = _load_errors[ep.name]
        else:
            status = f"disabled ({AUTOLOAD_ENV} is set)"
        rows.append(
            {"name": ep.name, "module": ep.value, "distribution": _distribution(ep), "status": status}
        )
    for name, plugin in manager.list_name_plugin():
        if name not in seen:
            module = getattr(plugin, "__name__", repr(plugin))
            rows.append(
                {"name": name, "module": module, "distribution": "-", "status": "registered at run time"}
            )
            seen.add(name)
    for name, status in _load_errors.items():
        if name not in seen:
            rows.append({"name": name, "module": "-", "distribution": "-", "status": status})
    return rows


def all_tasks() -> dict[str, Any]:
    """Every task that loaded plugins register, by name.

    A plugin whose ``simskip_register_tasks`` raises, or that registers a task name another plugin
    already took, registers no task and is left out (see :func:`installed_plugins`).
    """
    tasks: dict[str, Any] = {}

    def make_kwargs() -> tuple[dict[str, Any], Callable[[], None]]:
        pending: dict[str, Any] = {}

        def register(task: Any) -> None:
            if task.name in tasks or task.name in pending:
                raise ValueError(
                    f"two plugins register a task named {task.name!r}; task names must be unique."
                )
            pending[task.name] = task

        return {"register": register}, lambda: tasks.update(pending)

    _call_each(get_plugin_manager(), "simskip_register_tasks", make_kwargs)
    return dict(sorted(tasks.items()))
