"""A PyG ``BaseTransform`` that applies a fitted refiner to a node attribute of a ``Data`` object."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch_geometric.transforms import BaseTransform

from simskip_graph.ops import check_node_features
from simskip_graph.structure import StructureAwareSimSkip

__all__ = ["RefineNodes"]


class RefineNodes(BaseTransform):
    """Apply a fitted :class:`~simskip_core.api.SimSkip` (per node) or
    :class:`~simskip_graph.structure.StructureAwareSimSkip` (uses ``data.edge_index``) to a node
    attribute, e.g. ``data.x``. Composes with ``torch_geometric.transforms.Compose``.

    Args:
        model: a fitted SimSkip or StructureAwareSimSkip (anything with ``transform``).
        attr: the node attribute to refine (default ``"x"``).
        out_attr: where to write the result (default: overwrite ``attr``).

    The input ``Data`` is not modified (PyG transforms copy); the output attribute is a float32 tensor
    on the same device as the input attribute.

    Raises (when called):
        KeyError: ``data`` has no attribute ``attr``.
        ValueError: the attribute's row count differs from ``data.num_nodes``, or its width from
            the dimension the model was fitted on.
    """

    def __init__(self, model: Any, attr: str = "x", out_attr: str | None = None) -> None:
        if not hasattr(model, "transform"):
            raise TypeError(
                f"model must be a fitted SimSkip or StructureAwareSimSkip, got {type(model).__name__}."
            )
        self.model = model
        self.attr = attr
        self.out_attr = out_attr or attr

    def forward(self, data: Any) -> Any:
        """Return a copy of ``data`` whose ``out_attr`` holds the refined node attribute."""
        value = getattr(data, self.attr, None)
        if value is None:
            raise KeyError(
                f"the graph has no node attribute {self.attr!r} to refine (attributes: {sorted(data.keys())})."
            )
        n = int(data.num_nodes)
        feats = check_node_features(value, n, name=f"data.{self.attr}")
        if isinstance(self.model, StructureAwareSimSkip):
            if getattr(data, "edge_index", None) is None:
                raise KeyError("a structure-aware refiner needs data.edge_index.")
            refined = self.model.transform(feats, data.edge_index)
        else:
            refined = self.model.transform(feats)
        out = copy.copy(data)
        device = value.device if isinstance(value, torch.Tensor) else torch.device("cpu")
        setattr(out, self.out_attr, torch.from_numpy(np.ascontiguousarray(refined)).to(device))
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__}, attr={self.attr!r}, out_attr={self.out_attr!r})"
