"""Default settings shared by the KG plugin's modules (kept free of heavy imports)."""

from __future__ import annotations

__all__ = ["DEFAULT_NEIGHBOUR_TOP_K", "simskip_batch_size"]

#: Neighbours kept per entity in the KG pair signal (see :func:`~simskip_kg.pairs.neighbour_pairs`).
DEFAULT_NEIGHBOUR_TOP_K = 5


def simskip_batch_size(n: int, val_fraction: float = 0.1, preferred: int = 256) -> int:
    """A SimSkip batch size that fits ``n`` entities after the validation hold-out (KGs can be tiny)."""
    return int(max(2, min(preferred, int(n * (1.0 - val_fraction)) - 1)))
