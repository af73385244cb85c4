"""The skip refiner f(x) = x + g(x) of SimSkip (arXiv 2404.08701) and its training-only projector."""

from __future__ import annotations

from numbers import Integral
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ACTIVATIONS", "NORMS", "SkipRefiner", "build_mlp"]

#: Activation functions by name.
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}
#: Normalisation layers by name (applied after each hidden linear layer).
NORMS: dict[str, type[nn.Module] | None] = {"none": None, "layer": nn.LayerNorm, "batch": nn.BatchNorm1d}


def build_mlp(
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    *,
    depth: int,
    activation: str = "relu",
    dropout: float = 0.0,
    norm: str = "none",
) -> nn.Sequential:
    """An MLP of ``depth`` linear layers: in -> hidden (-> hidden)* -> out.

    Each hidden linear layer is followed by the optional norm, the activation and dropout.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}.")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}.")
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {sorted(NORMS)}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(depth - 1):
        layers.append(nn.Linear(width, hidden_dim))
        norm_cls = NORMS[norm]
        if norm_cls is not None:
            layers.append(norm_cls(hidden_dim))
        layers.append(ACTIVATIONS[activation]())
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = hidden_dim
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


def _positive_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool) and int(value) >= 1


class SkipRefiner(nn.Module):
    """f(x) = x + g(x): a residual MLP refiner whose last layer starts at zero, so f starts as the identity.

    Args:
        dim: embedding dimension d (input and output).
        hidden_dim: width of g's hidden layers (default: d).
        depth: number of linear layers in g (>= 1).
        activation: ``"relu"``, ``"gelu"``, ``"tanh"`` or ``"silu"``.
        dropout: dropout probability after each hidden layer of g.
        norm: ``"none"``, ``"layer"`` or ``"batch"`` normalisation after each hidden layer of g.
        normalize_output: L2-normalise f(x) (use when the host pipeline L2-normalises its embeddings).
        projector_dim: output size of the projector head used only during training.
        projector_depth: number of linear layers in the projector.
        residual_scale: alpha in x + alpha * g(x); alpha < 1 gives the blend alpha * f(x) + (1 - alpha) * x
            that auto mode may choose.
    """

    def __init__(
        self,
        dim: int,
        *,
        hidden_dim: int | None = None,
        depth: int = 2,
        activation: str = "relu",
        dropout: float = 0.0,
        norm: str = "none",
        normalize_output: bool = False,
        projector_dim: int = 128,
        projector_depth: int = 2,
        residual_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}.")
        if projector_dim < 1:
            raise ValueError(f"projector_dim must be >= 1, got {projector_dim}.")
        if hidden_dim is not None and not _positive_int(hidden_dim):
            raise ValueError(
                f"hidden_dim must be a positive int or None (None: the embedding dimension), got {hidden_dim!r}."
            )
        self.dim = dim
        self.hidden_dim = dim if hidden_dim is None else int(hidden_dim)
        self.depth = depth
        self.activation = activation
        self.dropout = dropout
        self.norm = norm
        self.normalize_output = normalize_output
        self.projector_dim = projector_dim
        self.projector_depth = projector_depth
        self.residual_scale = residual_scale
        self.g = build_mlp(
            dim, self.hidden_dim, dim, depth=depth, activation=activation, dropout=dropout, norm=norm
        )
        last = self.g[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.projector = build_mlp(
            dim, self.hidden_dim, projector_dim, depth=projector_depth, activation=activation
        )

    def config(self) -> dict[str, Any]:
        """The constructor arguments, JSON-serialisable; ``SkipRefiner(**config())`` rebuilds the architecture."""
        return {
            "dim": self.dim,
            "hidden_dim": self.hidden_dim,
            "depth": self.depth,
            "activation": self.activation,
            "dropout": self.dropout,
            "norm": self.norm,
            "normalize_output": self.normalize_output,
            "projector_dim": self.projector_dim,
            "projector_depth": self.projector_depth,
            "residual_scale": self.residual_scale,
        }

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """g(x), shape (n, d)."""
        return self.g(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """f(x) = x + alpha * g(x), optionally L2-normalised; (n, d) -> (n, d)."""
        out = x + self.g(x) if self.residual_scale == 1.0 else x + self.residual_scale * self.g(x)
        if self.normalize_output:
            out = F.normalize(out, dim=-1)
        return out

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """The training-only projector head; (n, d) -> (n, projector_dim)."""
        return self.projector(h)
