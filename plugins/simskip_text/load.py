"""Reload a saved refined model without running code from its folder.

``SentenceTransformer(path, trust_remote_code=True)`` imports whatever module class a folder's
``modules.json`` names, and first looks for that module as a ``.py`` file *inside the folder*: a
tampered folder that names ``evil.Module`` and ships ``evil.py`` runs ``evil.py``. The flag also
lets ``transformers`` follow an ``auto_map`` in a config file to code in the folder or on the Hub.

:func:`load_refined_model` inspects the folder before anything is imported and refuses one that

* names in ``modules.json`` a module class other than sentence-transformers' own
  (``sentence_transformers.*``) and the SimSkip stage (``simskip_text.module.SimSkipStage``),
* holds a Python file (``.py``, ``.pyc``) anywhere, or
* has an ``auto_map`` entry in any JSON file;

then loads with ``trust_remote_code=False``, handing sentence-transformers the already imported
:class:`~simskip_text.module.SimSkipStage` class for the stage's ``modules.json`` type.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simskip_core.errors import CorruptModelError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["STAGE_TYPE", "UnsafeModelError", "check_refined_folder", "load_refined_model"]

logger = logging.getLogger(__name__)

#: The ``modules.json`` type of the SimSkip stage (a stable import path).
STAGE_TYPE = "simskip_text.module.SimSkipStage"
#: sentence-transformers' own module classes live under this prefix.
TRUSTED_PREFIX = "sentence_transformers."
#: File suffixes that hold Python code.
CODE_SUFFIXES = (".py", ".pyc")


class UnsafeModelError(CorruptModelError):
    """A model folder asks for code to be imported or run; the message names the file and entry."""


def _refuse(folder: Path, problem: str) -> UnsafeModelError:
    return UnsafeModelError(
        f"refusing to load {folder}: {problem}. A folder written by refined.save() has none of this; "
        "it was changed after saving. Save the refined model again from a trusted copy."
    )


def _check_modules(folder: Path) -> list[dict[str, Any]]:
    path = folder / "modules.json"
    if not path.is_file():
        raise CorruptModelError(
            f"{folder} has no modules.json, so it is not a saved sentence-transformers model; "
            "save the refined model with refined.save(path)."
        )
    try:
        modules = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptModelError(f"{path} is not valid JSON ({error}); save the model again.") from error
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise CorruptModelError(f"{path} must hold a list of module entries; save the model again.")
    for entry in modules:
        kind = entry.get("type")
        if not isinstance(kind, str) or not (kind.startswith(TRUSTED_PREFIX) or kind == STAGE_TYPE):
            raise _refuse(
                folder,
                f"modules.json names the module class {kind!r}, which is neither sentence-transformers' own "
                f"nor the SimSkip stage ({STAGE_TYPE}), and importing it would run its code",
            )
    return modules


def _files(folder: Path) -> list[Path]:
    return [Path(root) / name for root, _dirs, names in os.walk(folder) for name in names]


def _has_key(value: Any, key: str) -> bool:
    if isinstance(value, dict):
        return key in value or any(_has_key(item, key) for item in value.values())
    if isinstance(value, list):
        return any(_has_key(item, key) for item in value)
    return False


def _check_files(folder: Path) -> None:
    for file in _files(folder):
        where = file.relative_to(folder)
        if file.suffix in CODE_SUFFIXES:
            raise _refuse(folder, f"it holds the Python file {where}")
        if file.suffix != ".json":
            continue
        try:
            content = json.loads(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CorruptModelError(f"{file} is not valid JSON ({error}); save the model again.") from error
        if _has_key(content, "auto_map"):
            raise _refuse(folder, f"{where} has an auto_map entry, which points transformers at custom code")


def check_refined_folder(path: str | Path) -> list[dict[str, Any]]:
    """Check that the saved model folder ``path`` loads without running code from it; return its module entries.

    Raises:
        FileNotFoundError: ``path`` is not a folder.
        UnsafeModelError: the folder names a foreign module class, holds a Python file or an ``auto_map``.
        CorruptModelError: ``modules.json`` or another JSON file is missing or unreadable.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} is not a folder; load_refined_model reads a local folder written by refined.save(path) "
            "(download a Hub model first, e.g. with huggingface_hub.snapshot_download)."
        )
    modules = _check_modules(folder)
    _check_files(folder)
    return modules


def load_refined_model(path: str | Path, **kwargs: Any) -> SentenceTransformer:
    """Load a refined model saved with ``refined.save(path)``, running no code from the folder.

    Needed for the stage form (``refined.save(path, portable=False)``, or a map without a Dense form);
    a portable folder also loads with plain ``SentenceTransformer(path)``.

    The folder is checked first (:func:`check_refined_folder`); it is then loaded with
    ``trust_remote_code=False``: sentence-transformers' own modules come from the installed
    ``sentence_transformers`` package and the SimSkip stage from the installed ``simskip_text``.
    The refined model's name and base model are read back from its model card (README.md).

    Args:
        path: the local folder.
        **kwargs: passed to ``SentenceTransformer`` (``device``, ``model_kwargs``, ...);
            ``local_files_only`` defaults to True. ``trust_remote_code=True`` is refused.

    Raises:
        ValueError: ``trust_remote_code=True`` was passed.
        UnsafeModelError, CorruptModelError, FileNotFoundError: see :func:`check_refined_folder`.
    """
    from sentence_transformers import SentenceTransformer

    from simskip_text.export import restore_card
    from simskip_text.module import SimSkipStage, as_refined
    from simskip_text.refine import find_stage

    if kwargs.pop("trust_remote_code", False):
        raise ValueError(
            "load_refined_model never runs code from the model folder; drop trust_remote_code=True "
            "(the SimSkip stage is imported from the installed simskip_text package)."
        )
    folder = Path(path).expanduser()
    check_refined_folder(folder)
    kwargs.setdefault("local_files_only", True)
    load_with_classes = getattr(SentenceTransformer, "_load_with_module_classes", None)
    if load_with_classes is not None:
        model = load_with_classes(str(folder), {STAGE_TYPE: SimSkipStage}, trust_remote_code=False, **kwargs)
    else:
        # sentence-transformers before the module_classes seam: the stage's class can only be resolved with
        # the flag; the checks above leave it nothing to import but installed packages.
        logger.info(
            "this sentence-transformers has no module_classes seam; loading %s with trust_remote_code", folder
        )
        model = SentenceTransformer(str(folder), trust_remote_code=True, **kwargs)
    restore_card(model, folder)
    return as_refined(model) if find_stage(model) is not None else model
