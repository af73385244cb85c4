"""Import timm the offline way, and recognise timm models."""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

__all__ = ["import_timm", "is_timm_model", "model_name"]


def import_timm() -> ModuleType:
    """Import and return ``timm`` with ``HF_HUB_OFFLINE`` defaulting to ``1``.

    Nothing in this plugin downloads; setting the variable (only when the user has not set it)
    keeps the Hugging Face hub client from trying the network while timm is imported.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import timm
    except ImportError as error:  # pragma: no cover - the plugin is not loaded without timm
        raise ImportError("the simskip vision plugin needs timm: pip install 'simskip[vision]'.") from error
    return timm


def is_timm_model(obj: Any) -> bool:
    """True when ``obj`` is an ``nn.Module`` that exposes timm's feature API.

    timm models carry a ``pretrained_cfg`` and implement ``forward_features`` and
    ``forward_head(x, pre_logits=True)``; that is what feature extraction uses.
    """
    import torch.nn as nn

    return (
        isinstance(obj, nn.Module)
        and isinstance(getattr(obj, "pretrained_cfg", None), dict)
        and callable(getattr(obj, "forward_features", None))
        and callable(getattr(obj, "forward_head", None))
    )


def model_name(model: Any) -> str:
    """The timm architecture name of ``model`` (``pretrained_cfg["architecture"]``), e.g. ``"efficientnet_lite0"``."""
    name = getattr(model, "pretrained_cfg", {}).get("architecture")
    if not name:
        raise ValueError(
            f"{type(model).__name__} has no pretrained_cfg['architecture']; build it with timm.create_model(name, ...)."
        )
    return str(name)
