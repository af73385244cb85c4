"""The on-disk array cache: hit, miss, recompute of a corrupt entry, permissions, bypass."""

from __future__ import annotations

import os
import stat

import numpy as np

from simskip_core.cache import cache_key, cached_arrays


def test_cache_hit_corrupt_entry_and_permissions(tmp_path) -> None:
    calls = []

    def compute():
        calls.append(1)
        return {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}

    key = cache_key("model", ["a", "b"])
    assert key == cache_key("model", ["a", "b"]) and key != cache_key("model", ["a", "c"])
    first = cached_arrays(tmp_path, "ns", key, compute)
    second = cached_arrays(tmp_path, "ns", key, compute)
    assert len(calls) == 1 and np.array_equal(first["x"], second["x"])
    path = tmp_path / "ns" / f"{key}.npz"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    path.write_bytes(b"not a zip")
    again = cached_arrays(tmp_path, "ns", key, compute)
    assert len(calls) == 2 and np.array_equal(again["x"], first["x"])
    cached_arrays(tmp_path, "ns", key, compute, enabled=False)
    assert len(calls) == 3
    assert not list((tmp_path / "ns").glob("*.tmp"))
