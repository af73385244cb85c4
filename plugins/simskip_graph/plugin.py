"""Hook implementations of the graph plugin (entry point ``graph = simskip_graph.plugin``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from simskip_core.embeddings import EmbeddingSet
from simskip_core.hooks import hookimpl
from simskip_core.tasks import Task
from simskip_graph import tasks as _tasks


@hookimpl
def simskip_register_tasks(register: Callable[[Task], None]) -> None:
    """Register ``graph/<polblogs|polbooks|football|karate>-<dgi|skipgram|gcn-sup|text>``, each carrying its
    node-classification evaluation, probe, ``edges`` pair signal and graph methods."""
    for task in _tasks.graph_tasks():
        register(task)


@hookimpl
def simskip_extract_embeddings(source: Any, options: Mapping[str, Any]) -> EmbeddingSet | None:
    """A PyG ``Data`` with node features becomes an :class:`EmbeddingSet`: rows ``data.<attr>``
    (``options["attr"]``, default ``"x"``), labels ``data.y`` when present, and the edges as the
    ``edges`` pair signal. Other sources return None."""
    try:
        from torch_geometric.data import Data
    except ImportError:  # pragma: no cover - the plugin is not loaded without PyG
        return None
    if not isinstance(source, Data):
        return None
    from simskip_graph.ops import check_node_features, edge_pairs

    attr = str(options.get("attr", "x"))
    value = getattr(source, attr, None)
    if value is None:
        raise ValueError(
            f"the graph has no node attribute {attr!r} to extract; train an encoder first "
            "(simskip_graph.encoders) and store its output on the Data object."
        )
    n = int(source.num_nodes)
    vectors = check_node_features(value, n, name=f"data.{attr}")
    y = getattr(source, "y", None)
    labels = None
    if y is not None and np.asarray(y).shape == (n,):
        labels = np.asarray(y.cpu().numpy() if hasattr(y, "cpu") else y, dtype=np.int64)
    pairs = (
        {"edges": edge_pairs(source.edge_index, n)} if getattr(source, "edge_index", None) is not None else {}
    )
    return EmbeddingSet(vectors, labels=labels, pairs=pairs, meta={"domain": "graph", "attr": attr})


@hookimpl
def simskip_attach(host: Any, model: Any) -> Any:
    """A PyG ``Data`` host gets its ``x`` refined by ``model`` (a copy is returned); other hosts: None."""
    try:
        from torch_geometric.data import Data
    except ImportError:  # pragma: no cover
        return None
    if not isinstance(host, Data):
        return None
    from simskip_graph.transform import RefineNodes

    return RefineNodes(model)(host)
