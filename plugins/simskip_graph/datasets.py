"""Real node-classification graphs that install offline: Newman's networks from graph-tool's collection
(Debian ``python3-graph-tool``) and PyG's built-in ``KarateClub``.

The ``.gt.gz`` files are looked up, in order, in

1. an explicit ``path`` argument (a file or a folder),
2. the folder named by the ``SIMSKIP_GRAPH_TOOL_DIR`` environment variable,
3. ``${SIMSKIP_DATA_DIR:-~/.cache/simskip/data}/graph-tool/`` (where ``scripts/fetch-graph-data.sh`` puts them),
4. ``/usr/lib/python3/dist-packages/graph_tool/collection/`` (graph-tool installed from Debian).

When none holds the file, :class:`~simskip_core.errors.MissingDataError` says how to fetch it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simskip_core.errors import MissingDataError
from simskip_graph.gt_io import gt_to_data, read_gt

__all__ = [
    "GRAPH_DATASETS",
    "GraphDataset",
    "collection_dirs",
    "find_gt_file",
    "largest_connected_component",
    "load_graph",
]

#: Environment variable naming a folder that holds the ``.gt.gz`` files.
GT_DIR_ENV = "SIMSKIP_GRAPH_TOOL_DIR"
#: Where Debian's python3-graph-tool installs the collection.
DEBIAN_COLLECTION = Path("/usr/lib/python3/dist-packages/graph_tool/collection")
FETCH_HINT = (
    "run `bash scripts/fetch-graph-data.sh` from the simskip repository (it downloads Debian's "
    "python3-graph-tool package with apt-get and extracts only graph_tool/collection/*.gt.gz into "
    "${SIMSKIP_DATA_DIR:-~/.cache/simskip/data}/graph-tool/), install graph-tool (apt-get install "
    f"python3-graph-tool), or point {GT_DIR_ENV} at a folder holding the file"
)


@dataclass(frozen=True)
class GraphDataset:
    """A node-classification graph of the collection.

    Attributes:
        name: short name (``"polblogs"``).
        file: file name in graph-tool's collection, or ``None`` for PyG built-ins.
        label: vertex property holding the classes.
        names: vertex property with node names/titles (``None`` when the graph has none).
        description: one line for tables.
        largest_component: restrict to the largest connected component by default.
    """

    name: str
    file: str | None
    label: str
    names: str | None
    description: str
    largest_component: bool = False


#: The graphs the plugin benchmarks. polblogs defaults to its largest connected component (1,222 of
#: 1,490 blogs; 266 blogs have no link at all, so no structural method can place them), as is usual
#: in the literature; pass ``largest_component=False`` for all nodes.
GRAPH_DATASETS: dict[str, GraphDataset] = {
    "polblogs": GraphDataset(
        "polblogs",
        "polblogs.gt.gz",
        "value",
        "label",
        "US political blogs 2005 (Adamic & Glance), hyperlinks, 2 classes (liberal/conservative)",
        largest_component=True,
    ),
    "polbooks": GraphDataset(
        "polbooks",
        "polbooks.gt.gz",
        "value",
        "label",
        "books on US politics (Krebs), co-purchases, 3 classes (liberal/neutral/conservative)",
    ),
    "football": GraphDataset(
        "football",
        "football.gt.gz",
        "value",
        "label",
        "US college football 2000 (Girvan & Newman), games, 12 conferences",
    ),
    "karate": GraphDataset(
        "karate", None, "y", None, "Zachary's karate club as shipped by PyG (KarateClub), 4 communities"
    ),
}


def collection_dirs(path: str | Path | None = None) -> list[Path]:
    """The folders searched for ``.gt.gz`` files, in order (see the module docstring)."""
    dirs: list[Path] = []
    if path is not None:
        dirs.append(Path(path).expanduser())
    if os.environ.get(GT_DIR_ENV):
        dirs.append(Path(os.environ[GT_DIR_ENV]).expanduser())
    data_dir = Path(os.environ.get("SIMSKIP_DATA_DIR", "~/.cache/simskip/data")).expanduser()
    dirs.append(data_dir / "graph-tool")
    dirs.append(DEBIAN_COLLECTION)
    return dirs


def find_gt_file(file: str, path: str | Path | None = None) -> Path:
    """Locate ``file`` (e.g. ``"polblogs.gt.gz"``); ``path`` may be the file itself or a folder.

    Raises:
        MissingDataError: the file is in none of :func:`collection_dirs`; the message says how to get it.
    """
    if path is not None and Path(path).expanduser().is_file():
        return Path(path).expanduser()
    searched = collection_dirs(path)
    for folder in searched:
        candidate = folder / file
        if candidate.is_file():
            return candidate
    raise MissingDataError(
        f"graph-tool collection file {file!r} not found (searched: {', '.join(map(str, searched))}). To get it, {FETCH_HINT}."
    )


def largest_connected_component(data: Any) -> tuple[Any, np.ndarray]:
    """Restrict ``data`` to its largest (weakly) connected component.

    Returns the sub-graph (node attributes sliced, edges re-indexed) and the kept original node ids.
    """
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    n = int(data.num_nodes)
    ei = data.edge_index.numpy()
    adj = sp.coo_matrix((np.ones(ei.shape[1]), (ei[0], ei[1])), shape=(n, n))
    _, comp = connected_components(adj, directed=True, connection="weak")
    keep = np.flatnonzero(comp == np.bincount(comp).argmax())
    sub = data.subgraph(torch.as_tensor(keep, dtype=torch.long))
    for key in ("node_names",):
        if getattr(data, key, None) is not None:
            setattr(sub, key, [getattr(data, key)[i] for i in keep])
    sub.num_nodes = len(keep)
    return sub, keep


def load_graph(
    name: str,
    *,
    path: str | Path | None = None,
    largest_component: bool | None = None,
) -> Any:
    """Load a named graph as a PyG ``Data`` with ``edge_index`` (undirected, coalesced, no self-loops), ``y``,
    ``num_nodes``, ``class_names`` and, where the graph has them, ``node_names``.

    Args:
        name: one of :data:`GRAPH_DATASETS` (``polblogs``, ``polbooks``, ``football``, ``karate``).
        path: a ``.gt``/``.gt.gz`` file or a folder holding the collection (optional).
        largest_component: keep only the largest connected component (default: the dataset's
            setting, True for polblogs). ``data.orig_index`` holds the kept original node ids.

    Raises:
        KeyError: unknown ``name``.
        MissingDataError: the file is not installed (the message says how to fetch it).
        GTFormatError: the file is corrupt.
    """
    if name not in GRAPH_DATASETS:
        raise KeyError(f"unknown graph {name!r}; choose one of {sorted(GRAPH_DATASETS)}.")
    spec = GRAPH_DATASETS[name]
    if spec.file is None:
        from torch_geometric.datasets import KarateClub

        karate = KarateClub()[0]
        from torch_geometric.data import Data

        data = Data(edge_index=karate.edge_index, y=karate.y, num_nodes=karate.num_nodes)
        data.class_names = [str(c) for c in range(int(karate.y.max()) + 1)]
        data.source = "torch_geometric.datasets.KarateClub"
    else:
        file = find_gt_file(spec.file, path)
        data = gt_to_data(read_gt(file), label=spec.label, name=spec.names, source=str(file))
        data.source = str(file)
    from torch_geometric.utils import remove_self_loops

    data.edge_index, _ = remove_self_loops(data.edge_index)  # a blog linking to itself says nothing
    data.orig_index = torch.arange(int(data.num_nodes))
    keep_lcc = spec.largest_component if largest_component is None else largest_component
    if keep_lcc:
        data, keep = largest_connected_component(data)
        data.orig_index = torch.as_tensor(keep, dtype=torch.long)
    data.name = name
    return data


def dataset_names() -> Sequence[str]:
    """Names accepted by :func:`load_graph`."""
    return tuple(GRAPH_DATASETS)
