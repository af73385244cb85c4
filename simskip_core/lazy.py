"""Lazy package exports (PEP 562), so importing a package does not import its heavy parts; deprecated module aliases."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["deprecated_alias", "lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module-level ``__getattr__`` and ``__dir__`` for ``package``.

    ``exports`` maps each public name to the submodule defining it; the submodule is imported the
    first time the name is accessed. Use as
    ``__getattr__, __dir__ = lazy_exports(__name__, {"refine_model": "simskip_text.refine"})``.
    """

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__


def deprecated_alias(old: str, new: str) -> None:
    """Make module ``old`` an alias of module ``new`` (for one release), with a ``DeprecationWarning``.

    Called at the top of the old module: ``import old`` then returns ``new`` itself, so every name,
    private ones included, keeps working.
    """
    import sys
    import warnings

    warnings.warn(
        f"{old} moved to {new}; the old path works for one more release. Import {new} instead.",
        DeprecationWarning,
        stacklevel=3,
    )
    sys.modules[old] = importlib.import_module(new)
