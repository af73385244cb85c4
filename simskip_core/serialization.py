"""Atomic model folders: ``config.json`` + ``model.safetensors`` (never pickle)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from simskip_core.errors import CorruptModelError

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "atomic_folder", "read_model_dir", "write_model_dir"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@contextmanager
def atomic_folder(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder that replaces ``path`` only when the ``with`` block succeeds.

    The staging folder is a temporary sibling of ``path``, renamed into place when complete, so a
    failure (disk full, a non-serialisable config) leaves no half-written folder and never damages
    an existing one. An existing ``path`` is an error unless ``overwrite=True``.
    """
    target = Path(path).expanduser()
    if target.exists() and not overwrite:
        raise FileExistsError(
            f"{target} already exists; choose a new folder or pass overwrite=True to replace it."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield staging
        if target.exists():
            backup = target.with_name(f".{target.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(target, backup)
            os.replace(staging, target)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_model_dir(
    path: str | Path, config: dict[str, Any], tensors: dict[str, torch.Tensor], *, overwrite: bool = False
) -> Path:
    """Write ``config`` and ``tensors`` into the folder ``path`` atomically (see :func:`atomic_folder`)."""
    with atomic_folder(path, overwrite=overwrite) as staging:
        text = json.dumps(config, indent=2, sort_keys=True)
        (staging / CONFIG_NAME).write_text(text + "\n", encoding="utf-8")
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(staging / WEIGHTS_NAME))
    return Path(path).expanduser()


def read_model_dir(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a folder written by :func:`write_model_dir`; missing or corrupt files raise :class:`CorruptModelError`."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"no saved simskip model at {folder}: the folder does not exist.")
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for required in (config_path, weights_path):
        if not required.is_file():
            raise CorruptModelError(
                f"{folder} is not a complete simskip model: {required.name} is missing. "
                "Save the model again with SimSkip.save()."
            )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptModelError(
            f"{config_path} is not valid JSON ({error}); the saved model is corrupt."
        ) from error
    if not isinstance(config, dict):
        raise CorruptModelError(f"{config_path} must hold a JSON object; the saved model is corrupt.")
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CorruptModelError(
            f"{weights_path} is not a readable safetensors file ({error}); the saved model is corrupt."
        ) from error
    return config, tensors
