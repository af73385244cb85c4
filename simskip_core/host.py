"""The core's entries to the host plugins: :func:`extract` embeddings from a host object, :func:`attach`
a fitted refiner to one.

Each asks the installed plugins through a ``firstresult`` hook (``simskip_extract_embeddings``,
``simskip_attach``); the first plugin that recognises the object answers. When none does, the error
names the plugins that were asked and those that failed to load, since a missing host library is the
usual cause.
"""

from __future__ import annotations

from typing import Any

from simskip_core.embeddings import EmbeddingSet
from simskip_core.errors import SimSkipError

__all__ = ["NoPluginError", "attach", "extract"]


class NoPluginError(SimSkipError, TypeError):
    """No installed plugin handles the object given to :func:`extract` or :func:`attach`."""


def _describe(value: Any) -> str:
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}" if kind.__module__ != "builtins" else kind.__qualname__


def _plugin_summary() -> str:
    from simskip_core.plugins import installed_plugins

    rows = installed_plugins()
    asked = [row["name"] for row in rows if row["status"] in {"loaded", "registered at run time"}]
    missing = [f"{row['name']} ({row['status']})" for row in rows if row["name"] not in asked]
    text = f"plugins asked: {', '.join(asked) or 'none'}"
    if missing:
        text += f"; not loaded: {', '.join(missing)}"
    return text


def extract(source: Any, **options: Any) -> EmbeddingSet:
    """Embeddings of a host object, from the plugin that recognises it.

    Args:
        source: what to embed, e.g. ``{"texts": [...], "model": SentenceTransformer | name}`` (text),
            ``{"images": ..., "model": ...}`` (vision), a trained PyKEEN model (KG entities) or a PyG
            ``Data`` with node features (graph). See each plugin's documentation for its sources.
        **options: passed to the plugin, e.g. ``batch_size``, ``progress``, ``cache_dir``.

    Raises:
        NoPluginError: no installed plugin handles ``source`` (the message lists the plugins).
        TypeError: the answering plugin returned something other than an :class:`EmbeddingSet`.
    """
    from simskip_core.plugins import get_plugin_manager

    result = get_plugin_manager().hook.simskip_extract_embeddings(source=source, options=dict(options))
    if result is None:
        raise NoPluginError(
            f"no installed simskip plugin extracts embeddings from a {_describe(source)} "
            f"({_plugin_summary()}); install the plugin for your host library (`simskip plugins` lists them)."
        )
    if not isinstance(result, EmbeddingSet):
        raise TypeError(
            f"a plugin's simskip_extract_embeddings returned {_describe(result)} for a {_describe(source)}, "
            "not an EmbeddingSet; the plugin is broken."
        )
    return result


def attach(host: Any, model: Any) -> Any:
    """The host object with the fitted refiner ``model`` put into it, from the plugin that recognises ``host``.

    For example a sentence-transformers model gets a SimSkip stage appended, a timm backbone becomes a
    ``RefinedBackbone``, a PyKEEN model gets refined entity vectors, a PyG ``Data`` a refined ``x``.
    Plugins return a new object and leave ``host`` unchanged.

    Raises:
        NoPluginError: no installed plugin handles ``host`` (the message lists the plugins).
    """
    from simskip_core.plugins import get_plugin_manager

    result = get_plugin_manager().hook.simskip_attach(host=host, model=model)
    if result is None:
        raise NoPluginError(
            f"no installed simskip plugin attaches a refiner to a {_describe(host)} "
            f"({_plugin_summary()}); install the plugin for your host library (`simskip plugins` lists them)."
        )
    return result
