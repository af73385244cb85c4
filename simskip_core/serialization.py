"""Model folders: ``config.json`` + ``model.safetensors`` (never pickle), replaced atomically and recoverably.

Rules that keep a user's data safe:

* Only a *model folder* is ever replaced: a folder whose ``config.json`` is a JSON object with a
  ``"format"`` string starting with ``"simskip"`` (see :func:`is_model_folder`), or an empty folder.
  Anything else (a file, a folder of the user's files) is refused with a message that says why.
* A new folder is written to a staging sibling ``.NAME.<pid>.<token>.simskip-staging``, its files and the
  folder are fsynced, then it takes the place of ``NAME``: by an atomic exchange (Linux
  ``renameat2(RENAME_EXCHANGE)``) where the file system has one, else by moving the old folder to the
  fixed sibling ``.NAME.simskip-old`` and renaming the new one in. A process killed between those two
  renames leaves the old model in ``.NAME.simskip-old``; the next :func:`read_model_dir` or save of
  ``NAME`` moves it back. Staging folders of killed saves are removed by the next save.
* ``config.json`` is written after the weights and records their sha256 (``"weights_sha256"``), which
  :func:`read_model_dir` verifies.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import json
import logging
import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save_file

from simskip_core.errors import CorruptModelError

__all__ = [
    "CONFIG_NAME",
    "FORMAT_PREFIX",
    "HASH_KEY",
    "WEIGHTS_NAME",
    "atomic_folder",
    "file_sha256",
    "is_model_folder",
    "read_model_dir",
    "write_model_dir",
]

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: ``config.json``'s ``"format"`` starts with this in every folder simskip or a plugin saves.
FORMAT_PREFIX = "simskip"
#: The ``config.json`` key holding the sha256 (hex) of ``model.safetensors``.
HASH_KEY = "weights_sha256"
_STAGING_SUFFIX = ".simskip-staging"
_OLD_SUFFIX = ".simskip-old"
_LEGACY_OLD_SUFFIX = ".old"  # where simskip 0.1 moved the old folder during a replace


def is_model_folder(path: str | Path) -> bool:
    """True when ``path`` is a folder (not a link) whose ``config.json`` names a simskip format.

    That is the only kind of folder simskip replaces or deletes: its ``config.json`` is a JSON object
    whose ``"format"`` is a string starting with ``"simskip"`` (``"simskip-model"`` for the core,
    other ``simskip-...`` names for plugins).
    """
    folder = Path(path).expanduser()
    if folder.is_symlink() or not folder.is_dir():
        return False
    try:
        config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    fmt = config.get("format") if isinstance(config, dict) else None
    return isinstance(fmt, str) and fmt.startswith(FORMAT_PREFIX)


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, as 64 hex digits (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- writing
@contextmanager
def atomic_folder(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder that replaces ``path`` only when the ``with`` block succeeds.

    A failure inside the block (disk full, a non-serialisable config) removes the staging folder and
    leaves ``path`` untouched. An existing ``path`` is an error unless ``overwrite=True``, and even then
    only an empty folder or a simskip model folder (:func:`is_model_folder`) is replaced; files written
    into the staging folder are fsynced before it is renamed into place.
    """
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    _recover(target, tidy=True)
    _remove_stale_staging(target)
    _check_replaceable(target, overwrite)
    staging = _make_staging(target)
    try:
        yield staging
        _fsync_tree(staging)
        _install(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_model_dir(
    path: str | Path, config: dict[str, Any], tensors: dict[str, torch.Tensor], *, overwrite: bool = False
) -> Path:
    """Write ``tensors`` then ``config`` (plus the weights' sha256) into the folder ``path`` atomically.

    See :func:`atomic_folder` for when an existing ``path`` is replaced. ``config`` is not modified;
    the written ``config.json`` adds ``"weights_sha256"``.
    """
    with atomic_folder(path, overwrite=overwrite) as staging:
        weights = staging / WEIGHTS_NAME
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(weights))
        text = json.dumps({**config, HASH_KEY: file_sha256(weights)}, indent=2, sort_keys=True)
        (staging / CONFIG_NAME).write_text(text + "\n", encoding="utf-8")
    return Path(path).expanduser()


def _check_replaceable(target: Path, overwrite: bool) -> None:
    """Raise unless ``target`` is absent, or ``overwrite`` and it is an empty folder or a model folder."""
    if target.is_symlink():
        raise FileExistsError(
            f"{target} is a symbolic link; simskip does not replace links. Save to the folder it points to "
            "or to a new path."
        )
    if not target.exists():
        return
    if not target.is_dir():
        raise FileExistsError(
            f"{target} is a file, not a simskip model folder; simskip never replaces it. Choose another path."
        )
    if not overwrite:
        raise FileExistsError(
            f"{target} already exists; choose a new folder or pass overwrite=True to replace it."
        )
    if is_model_folder(target) or not any(target.iterdir()):
        return
    entries = sorted(p.name for p in target.iterdir())
    shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    raise FileExistsError(
        f"{target} is not a simskip model folder (no config.json with a simskip format) and holds "
        f"{len(entries)} entries ({shown}); overwrite=True replaces only a folder simskip saved, so its "
        "files are left alone. Choose a new or empty folder."
    )


def _make_staging(target: Path) -> Path:
    """A new, empty staging folder next to ``target``, named after the writing process."""
    while True:
        staging = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}{_STAGING_SUFFIX}")
        try:
            staging.mkdir()
            return staging
        except FileExistsError:
            continue


def _install(staging: Path, target: Path) -> None:
    """Put the complete ``staging`` folder at ``target``, replacing an empty folder or a model folder."""
    parent = target.parent
    if not target.exists() or not any(target.iterdir()):
        os.replace(staging, target)  # rename(2) replaces an empty folder atomically
        _fsync_dir(parent)
        return
    if _exchange(staging, target):  # staging now holds the old model
        _fsync_dir(parent)
        _discard(staging)
        return
    old = _old_sibling(target)
    if old.exists() or old.is_symlink():
        raise FileExistsError(
            f"{old} is in the way of replacing {target} and is not a simskip model folder; move it away and save again."
        )
    os.replace(target, old)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(old, target)
        raise
    _fsync_dir(parent)
    _discard(old)


def _discard(old: Path) -> None:
    """Remove the replaced model folder; a failure is logged (the new folder is in place, the next save tidies)."""
    try:
        _remove_model_folder(old)
    except OSError as error:
        logger.warning("the new model is saved but the old folder %s could not be removed (%s)", old, error)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux ``renameat2(RENAME_EXCHANGE)``; False where that is unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # kernel or file system without the exchange: use the two-rename fallback
    raise OSError(code, os.strerror(code), str(b))


def _remove_model_folder(folder: Path) -> None:
    """Delete a folder simskip made, ``config.json`` last, so a killed removal still looks like a model folder."""
    for entry in folder.iterdir():
        if entry.name == CONFIG_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    (folder / CONFIG_NAME).unlink(missing_ok=True)
    folder.rmdir()


def _fsync_tree(folder: Path) -> None:
    """fsync every file and folder under ``folder`` (deepest first) and ``folder`` itself."""
    for root, _dirs, files in os.walk(folder, topdown=False):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def _fsync_dir(folder: Path) -> None:
    """fsync a folder so that renames inside it are durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not fsync folders
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------- recovery
def _old_sibling(target: Path) -> Path:
    return target.with_name(f".{target.name}{_OLD_SUFFIX}")


def _recover(target: Path, *, tidy: bool) -> Path | None:
    """Undo a replace that was killed halfway; return the folder restored to ``target`` or read instead.

    When ``target`` is missing and a model folder waits in ``.NAME.simskip-old`` (or simskip 0.1's
    ``.NAME.old``), it is renamed back; when the rename fails (read-only file system) its path is
    returned so that it can be read where it is. With ``tidy``, a left-over old model folder next to
    a present ``target`` (the kill came after the new folder was in place) is deleted.
    """
    for old in (_old_sibling(target), target.with_name(f".{target.name}{_LEGACY_OLD_SUFFIX}")):
        if not is_model_folder(old):
            continue
        if target.exists() or target.is_symlink():
            if tidy and is_model_folder(target):
                _remove_model_folder(old)
            continue
        try:
            os.replace(old, target)
        except OSError as error:
            logger.warning("cannot restore %s from %s (%s); reading it where it is", target, old, error)
            return old
        _fsync_dir(target.parent)
        logger.warning("restored the model folder %s from %s, left by an interrupted save", target, old)
        return target
    return None


def _remove_stale_staging(target: Path) -> None:
    """Delete staging folders of ``target`` left by saves whose process no longer runs."""
    prefix = f".{target.name}."
    for entry in target.parent.iterdir():
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(_STAGING_SUFFIX)):
            continue
        pid_text, _, token = name[len(prefix) : -len(_STAGING_SUFFIX)].partition(".")
        if not (pid_text.isdigit() and token) or entry.is_symlink() or not entry.is_dir():
            continue
        if _process_alive(int(pid_text)):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        logger.info("removed %s, the staging folder of an interrupted save", entry)


def _process_alive(pid: int) -> bool:
    """True unless no process ``pid`` exists (one owned by another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


# ---------------------------------------------------------------------------------------------- reading
def read_model_dir(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a folder written by :func:`write_model_dir` and check it.

    Restores a folder left in ``.NAME.simskip-old`` by an interrupted save. Missing files, invalid JSON,
    weights whose sha256 differs from ``config.json``'s ``"weights_sha256"`` and non-finite weights raise
    :class:`CorruptModelError` naming the file; files the process may not read raise ``PermissionError``.
    A folder saved before hashes were recorded loads with a logged warning.
    """
    folder = Path(path).expanduser()
    if not folder.exists():
        folder = _recover(folder, tidy=False) or folder
    if not folder.exists():
        raise FileNotFoundError(f"no saved simskip model at {folder}: the folder does not exist.")
    if not folder.is_dir():
        raise CorruptModelError(
            f"{folder} is a file, not a model folder; pass the folder SimSkip.save() wrote."
        )
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for required in (config_path, weights_path):
        if not required.is_file():
            raise CorruptModelError(
                f"{folder} is not a complete simskip model: {required.name} is missing. "
                "Save the model again with SimSkip.save()."
            )
    config = _read_config(config_path)
    data = _read_bytes(weights_path)
    _verify_hash(config, data, weights_path)
    try:
        tensors = load_bytes(data)
    except (SafetensorError, ValueError) as error:
        raise CorruptModelError(
            f"{weights_path} is not a readable safetensors file ({error}); the saved model is corrupt."
        ) from error
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CorruptModelError(
                f"{weights_path} holds NaN or Inf in tensor {name!r}; the saved model is corrupt. Save it again."
            )
    return config, tensors


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except PermissionError as error:
        raise PermissionError(
            f"cannot read {path}: permission denied; give this user read access to the model folder."
        ) from error


def _read_config(config_path: Path) -> dict[str, Any]:
    try:
        config = json.loads(_read_bytes(config_path).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptModelError(
            f"{config_path} is not valid JSON ({error}); the saved model is corrupt."
        ) from error
    if not isinstance(config, dict):
        raise CorruptModelError(f"{config_path} must hold a JSON object; the saved model is corrupt.")
    return config


def _verify_hash(config: dict[str, Any], data: bytes, weights_path: Path) -> None:
    expected = config.get(HASH_KEY)
    if expected is None:
        logger.warning(
            "%s has no %r in config.json (saved by an older simskip): its integrity is not checked; "
            "save the model again to record one",
            weights_path,
            HASH_KEY,
        )
        return
    if not isinstance(expected, str):
        raise CorruptModelError(
            f"{weights_path.parent / CONFIG_NAME}: key {HASH_KEY!r} must be a hex string, got {expected!r}."
        )
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected.lower():
        raise CorruptModelError(
            f"{weights_path} does not match the sha256 recorded in config.json ({HASH_KEY}); the file was "
            "changed or damaged after saving. Restore it from a copy or save the model again."
        )
