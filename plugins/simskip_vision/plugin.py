"""Hook implementations of the vision plugin (entry point ``vision = simskip_vision.plugin``).

Importing this module stays cheap: timm is imported only when a hook needs it. The plugin refuses
to load (ImportError, reported by ``simskip plugins``) when timm is not installed.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from simskip_core.embeddings import EmbeddingSet
from simskip_core.hooks import hookimpl
from simskip_core.tasks import Task
from simskip_vision import tasks as _tasks

if importlib.util.find_spec("timm") is None:  # pragma: no cover - depends on the install
    raise ImportError("the simskip vision plugin needs timm: pip install 'simskip[vision]'")

__all__ = ["simskip_attach", "simskip_extract_embeddings", "simskip_register_tasks"]


def _is_timm_model(obj: Any) -> bool:
    # An object can only be a timm model if timm is already imported.
    if "timm" not in sys.modules:
        return False
    from simskip_vision._timm import is_timm_model

    return is_timm_model(obj)


@hookimpl
def simskip_register_tasks(register: Callable[[Task], None]) -> None:
    """Register vision/fashion_mnist-efficientnet_lite0 and vision/mnist5k-efficientnet_lite0 (each
    carrying its evaluation and default probe)."""
    for task in _tasks.vision_tasks():
        register(task)


@hookimpl
def simskip_extract_embeddings(source: Any, options: Mapping[str, Any]) -> EmbeddingSet | None:
    """Pooled features of ``{"images": ..., "model": timm model | RefinedBackbone | timm name}`` (optional ``"labels"``).

    ``images``: uint8 array (n, H, W) grey or (n, H, W, 3) RGB, or a list of PIL images. A model
    name is built with :func:`~simskip_vision.weights.create_backbone` (offline weights; ``options``
    may carry ``checkpoint``). ``options``: ``batch_size`` (64), ``progress`` (True), ``cache_dir``
    (None: no cache), ``use_cache`` (True), ``data_config`` (timm's). Other sources return None.
    """
    if not isinstance(source, Mapping) or "images" not in source:
        return None
    model = source.get("model", "efficientnet_lite0")
    if isinstance(model, str):
        from simskip_vision.weights import create_backbone

        model = create_backbone(model, checkpoint=options.get("checkpoint"))
    else:
        from simskip_vision.wrapper import RefinedBackbone

        if not (_is_timm_model(model) or isinstance(model, RefinedBackbone)):
            return None
    from simskip_vision.extract import extract_embeddings

    labels = source.get("labels")
    return extract_embeddings(
        model,
        source["images"],
        labels=None if labels is None else np.asarray(labels),
        batch_size=int(options.get("batch_size", 64)),
        progress=bool(options.get("progress", True)),
        cache_dir=options.get("cache_dir"),
        use_cache=bool(options.get("use_cache", True)),
        data_config=options.get("data_config"),
    )


@hookimpl
def simskip_attach(host: Any, model: Any) -> Any:
    """Combine a timm model and a fitted SimSkip model into a :class:`RefinedBackbone`; None for other hosts."""
    if not _is_timm_model(host):
        return None
    from simskip_vision.wrapper import RefinedBackbone

    return RefinedBackbone(host, model)
