"""An on-disk cache of arrays (base embeddings), keyed by a hash of what produced them, written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["cache_key", "cached_arrays"]


def cache_key(*parts: Any) -> str:
    """A stable hex digest of JSON-serialisable ``parts`` (model name and version, texts, options, ...)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()[:24]


def cached_arrays(
    cache_dir: Path | str,
    namespace: str,
    key: str,
    compute: Callable[[], Mapping[str, np.ndarray]],
    *,
    enabled: bool = True,
) -> dict[str, np.ndarray]:
    """Return ``compute()``'s arrays, reading them from ``cache_dir/namespace/key.npz`` when present.

    The file is written to a temporary name and renamed, so an interrupted run never leaves a
    half-written cache entry. A corrupt entry is recomputed. ``enabled=False`` bypasses the cache.
    """
    if not enabled:
        return dict(compute())
    folder = Path(cache_dir).expanduser() / namespace
    path = folder / f"{key}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as stored:
                return {name: stored[name] for name in stored.files}
        except (OSError, ValueError, EOFError):
            path.unlink(missing_ok=True)
    arrays = dict(compute())
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)  # type: ignore[arg-type]
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; a shared cache must follow the umask
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return arrays


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
