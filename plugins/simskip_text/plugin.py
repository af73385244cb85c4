"""Hook implementations of the text plugin (entry point ``text = simskip_text.plugin``).

Importing this module stays cheap: sentence-transformers is imported only when a hook needs it.
The plugin refuses to load (ImportError, reported by ``simskip plugins``) when sentence-transformers
is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from simskip_core.embeddings import EmbeddingSet
from simskip_core.hooks import hookimpl
from simskip_core.tasks import Task
from simskip_text import tasks as _tasks

if importlib.util.find_spec("sentence_transformers") is None:  # pragma: no cover - depends on the install
    raise ImportError("the simskip text plugin needs sentence-transformers: pip install 'simskip[text]'")

__all__ = ["simskip_attach", "simskip_extract_embeddings", "simskip_register_tasks"]


def _is_sentence_transformer(obj: Any) -> bool:
    # An object can only be a SentenceTransformer if the library is already imported.
    if "sentence_transformers" not in sys.modules:
        return False
    from sentence_transformers import SentenceTransformer

    return isinstance(obj, SentenceTransformer)


@hookimpl
def simskip_register_tasks(register: Callable[[Task], None]) -> None:
    """Register text/rotten_tomatoes, text/tweet_sentiment, text/simlex999 and text/wordsim353 (each
    carrying its evaluation and default probe)."""
    for task in _tasks.text_tasks():
        register(task)


@hookimpl
def simskip_extract_embeddings(source: Any, options: Mapping[str, Any]) -> EmbeddingSet | None:
    """Embed ``{"texts": [...], "model": SentenceTransformer | path | None}`` (optional ``"labels"``).

    ``options``: ``batch_size`` (64), ``progress`` (True), ``cache_dir`` (None: no cache),
    ``use_cache`` (True), ``prompt`` (None), ``device`` ("cpu", used when loading from a path).
    A missing or None ``"model"`` means the shipped all-MiniLM-L6-v2. Other sources return None.
    """
    if not isinstance(source, Mapping) or "texts" not in source:
        return None
    from simskip_text.extract import (
        DEFAULT_MODEL_NAME,
        check_texts,
        encode_texts,
        model_fingerprint,
        resolve_model,
    )

    texts = check_texts(source["texts"])
    model = resolve_model(source.get("model"), device=str(options.get("device", "cpu")))
    vectors = encode_texts(
        model,
        texts,
        batch_size=int(options.get("batch_size", 64)),
        progress=bool(options.get("progress", True)),
        cache_dir=options.get("cache_dir"),
        use_cache=bool(options.get("use_cache", True)),
        prompt=options.get("prompt"),
    )
    labels = source.get("labels")
    given = source.get("model")
    if given is None:
        name = DEFAULT_MODEL_NAME
    elif isinstance(given, str | os.PathLike):
        name = str(given)
    else:
        name = str(getattr(given.model_card_data, "base_model", None) or type(given).__name__)
    meta = {"domain": "text", "model": name, "fingerprint": model_fingerprint(model)}
    return EmbeddingSet(vectors, ids=texts, labels=None if labels is None else np.asarray(labels), meta=meta)


@hookimpl
def simskip_attach(host: Any, model: Any) -> Any:
    """Append a fitted SimSkip model to a SentenceTransformer (returns a refined copy); None for other hosts."""
    if not _is_sentence_transformer(host):
        return None
    from simskip_text.refine import attach_simskip

    return attach_simskip(host, model)
