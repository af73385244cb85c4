"""Hook implementations of the KG plugin (entry point ``kg = simskip_kg.plugin``).

Importing this module stays cheap: pykeen is imported only when a hook needs it (``import pykeen``
costs seconds). The plugin refuses to load (ImportError, reported by ``simskip plugins``) when
pykeen is not installed.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from simskip_core.embeddings import EmbeddingSet
from simskip_core.hooks import hookimpl
from simskip_core.tasks import Task
from simskip_kg import tasks as _tasks

if importlib.util.find_spec("pykeen") is None:  # pragma: no cover - depends on the install
    raise ImportError("the simskip kg plugin needs pykeen: pip install 'simskip[kg]'")

__all__ = ["simskip_attach", "simskip_extract_embeddings", "simskip_register_tasks"]


def _pykeen_model(obj: Any) -> Any:
    """The ERModel inside ``obj`` (a model or a PipelineResult), or None when ``obj`` is not PyKEEN's."""
    # An object can only be a PyKEEN model if pykeen is already imported.
    if "pykeen" not in sys.modules:
        return None
    from pykeen.models import ERModel
    from pykeen.pipeline import PipelineResult

    if isinstance(obj, PipelineResult):
        return obj.model
    if isinstance(obj, ERModel):
        return obj
    return None


@hookimpl
def simskip_register_tasks(register: Callable[[Task], None]) -> None:
    """Register kg/{nations,kinships,umls}-{transe,distmult} (Nations in the quick suite), each carrying
    its link-prediction evaluation, validation-MRR probe, neighbour pair signal and relation re-fit methods."""
    for task in _tasks.kg_tasks():
        register(task)


@hookimpl
def simskip_extract_embeddings(source: Any, options: Mapping[str, Any]) -> EmbeddingSet | None:
    """Entity vectors of a PyKEEN model or ``PipelineResult`` (None for other sources).

    ``options``: ``"dataset"`` (a pykeen Dataset or name; a PipelineResult's own training factory is
    used otherwise) gives entity labels as ids and the ``"kg_neighbours"`` pair signal;
    ``"kind"``: ``"entity"`` (default) or ``"relation"``; ``"neighbour_top_k"`` (default 5, None = all).
    Complex embeddings come as real pairs; see :mod:`simskip_kg.embeddings`.
    """
    model = _pykeen_model(source)
    if model is None:
        return None
    from pykeen.pipeline import PipelineResult

    from simskip_kg.embeddings import extract_entity_vectors, extract_relation_vectors
    from simskip_kg.inputs import resolve_dataset
    from simskip_kg.pairs import neighbour_pairs

    kind = str(options.get("kind", "entity"))
    if kind not in {"entity", "relation"}:
        raise ValueError(f"options['kind'] must be 'entity' or 'relation', got {kind!r}.")
    vectors, layout = (extract_entity_vectors if kind == "entity" else extract_relation_vectors)(model)
    training = None
    if options.get("dataset") is not None:
        training = resolve_dataset(options["dataset"]).training
    elif isinstance(source, PipelineResult):
        training = source.training
    ids = None
    pairs: dict[str, np.ndarray] = {}
    if training is not None:
        from simskip_kg.inputs import _check_sizes

        _check_sizes(model, training, "the given dataset's training factory")
        mapping = getattr(training, f"{kind}_to_id", None)
        if mapping is not None and len(mapping) == len(vectors):
            inverse = {i: label for label, i in mapping.items()}
            ids = [inverse[i] for i in range(len(vectors))]
        if kind == "entity":
            top_k = options.get("neighbour_top_k", 5)
            pairs[_tasks.NEIGHBOURS] = neighbour_pairs(training.mapped_triples, len(vectors), top_k=top_k)
    meta = {"domain": "kg", "model": type(model).__name__, "layout": layout.describe(), "kind": kind}
    return EmbeddingSet(vectors, ids=ids, pairs=pairs, meta=meta)


@hookimpl
def simskip_attach(host: Any, model: Any) -> Any:
    """A copy of a PyKEEN model (or a PipelineResult's model) with entities refined by fitted SimSkip ``model``."""
    pykeen_model = _pykeen_model(host)
    if pykeen_model is None:
        return None
    from simskip_kg.embeddings import extract_entity_vectors, with_entity_vectors

    vectors, _ = extract_entity_vectors(pykeen_model)
    return with_entity_vectors(pykeen_model, model.transform(vectors))
