"""simskip graph plugin: refine node embeddings of PyTorch Geometric graphs with SimSkip.

Quick start (KarateClub ships with PyG)::

    from simskip_graph import RefineNodes, StructureAwareSimSkip, deep_graph_infomax

    refiner = StructureAwareSimSkip(hops=2, epochs=30).fit(data.x, data.edge_index)
    refined = refiner.transform(data.x, data.edge_index)        # or RefineNodes(refiner) in a Compose
    refiner.save("my-graph-refiner"); StructureAwareSimSkip.load("my-graph-refiner")

Heavy imports (torch_geometric, torch) happen only when these names are first used.
"""

from __future__ import annotations

from simskip_core.lazy import lazy_exports

__all__ = [
    "ENCODERS",
    "GRAPH_DATASETS",
    "STRUCTURE_DEFAULTS",
    "GTFormatError",
    "GTGraph",
    "GraphAutoSimSkip",
    "GraphDataset",
    "LinkPredictionProbe",
    "RefineNodes",
    "StructureAwareSimSkip",
    "WalkSkipGram",
    "adjacency",
    "check_edge_index",
    "check_node_features",
    "deep_graph_infomax",
    "edge_pairs",
    "fit_kwargs_for",
    "load_graph",
    "neighbour_average",
    "node_input_features",
    "normalized_adjacency",
    "propagate",
    "random_walk_skipgram",
    "read_gt",
    "spectral_embedding",
    "split_edges",
    "supervised_gcn_hidden",
    "text_features",
    "uniform_random_walks",
    "write_gt",
]

_EXPORTS = {
    "GraphAutoSimSkip": "simskip_graph.auto",
    "LinkPredictionProbe": "simskip_graph.auto",
    "split_edges": "simskip_graph.auto",
    "GRAPH_DATASETS": "simskip_graph.datasets",
    "GraphDataset": "simskip_graph.datasets",
    "load_graph": "simskip_graph.datasets",
    "ENCODERS": "simskip_graph.encoders",
    "WalkSkipGram": "simskip_graph.encoders",
    "deep_graph_infomax": "simskip_graph.encoders",
    "node_input_features": "simskip_graph.encoders",
    "random_walk_skipgram": "simskip_graph.encoders",
    "supervised_gcn_hidden": "simskip_graph.encoders",
    "text_features": "simskip_graph.encoders",
    "uniform_random_walks": "simskip_graph.encoders",
    "GTFormatError": "simskip_graph.gt_io",
    "GTGraph": "simskip_graph.gt_io",
    "read_gt": "simskip_graph.gt_io",
    "write_gt": "simskip_graph.gt_io",
    "adjacency": "simskip_graph.ops",
    "check_edge_index": "simskip_graph.ops",
    "check_node_features": "simskip_graph.ops",
    "edge_pairs": "simskip_graph.ops",
    "neighbour_average": "simskip_graph.ops",
    "normalized_adjacency": "simskip_graph.ops",
    "propagate": "simskip_graph.ops",
    "spectral_embedding": "simskip_graph.ops",
    "STRUCTURE_DEFAULTS": "simskip_graph.structure",
    "StructureAwareSimSkip": "simskip_graph.structure",
    "fit_kwargs_for": "simskip_graph.structure",
    "RefineNodes": "simskip_graph.transform",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
