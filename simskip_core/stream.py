"""Deprecated alias of :mod:`simskip_core.scale.stream` (moved in 0.2; removed in the release after)."""

from simskip_core.lazy import deprecated_alias

deprecated_alias(__name__, "simskip_core.scale.stream")
