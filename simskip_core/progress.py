"""Progress bars that can be silenced: ``progress=False``, ``TQDM_DISABLE=1``, or output that is not a terminal."""

from __future__ import annotations

import os

__all__ = ["bar_disabled"]

_FALSE = {"", "0", "false", "no", "off"}


def bar_disabled(progress: bool) -> bool | None:
    """The ``disable`` argument for ``tqdm`` given a caller's ``progress`` flag.

    True when ``progress`` is off or the ``TQDM_DISABLE`` environment variable is set (tqdm itself lets
    an explicit ``disable=False`` win over the variable); otherwise None, with which tqdm shows the bar
    only when its output is a terminal, so logs and pipes stay clean.
    """
    if not progress or os.environ.get("TQDM_DISABLE", "").strip().lower() not in _FALSE:
        return True
    return None
