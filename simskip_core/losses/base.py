"""The interface every simskip loss implements."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

__all__ = ["ContrastiveLoss"]


class ContrastiveLoss(nn.Module):
    """Base class of simskip losses: ``loss(z_a, z_b, positives=..., features=..., signals=...) -> scalar``.

    Row ``i`` of ``z_a`` and row ``i`` of ``z_b`` are the projections of two augmented views of the
    same batch item; they are always a positive pair. Each loss does its own normalisation of the
    projections (cosine for NT-Xent, batch standardisation for the Student-t kernel, ...).

    Keyword inputs (all optional; a loss ignores what it does not use):
        positives: (B, B) bool, True where items i != j of the batch are also positives
            (union of every pair signal: mutual k-NN, labels, graph edges, ...). The diagonal is ignored.
        features: pair (h_a, h_b) of (B, d) refined features before the projector
            (the difficulty-aware loss flags hard pairs from their cosine similarity).
        signals: per-signal (B, B) bool masks by name, for losses that weight signals separately
            (multi-similarity). The name ``"views"`` is reserved for the augmentation pairing.

    Losses with parameters of their own (projection heads, uncertainty weights) create them in
    :meth:`setup`, which the trainer calls once before building the optimizer.
    """

    #: True when the loss needs ``signals`` (and so at least one pair signal besides the views).
    requires_signals: bool = False

    def setup(self, *, feature_dim: int, signal_names: Sequence[str]) -> None:
        """Create parameters that depend on the data (called once by the trainer before training)."""

    def summary(self) -> dict[str, float]:
        """Learned state worth recording after each epoch (e.g. signal weights); empty for most losses."""
        return {}

    def forward(
        self,
        z_a: torch.Tensor,
        z_b: torch.Tensor,
        *,
        positives: torch.Tensor | None = None,
        features: tuple[torch.Tensor, torch.Tensor] | None = None,
        signals: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Return the scalar loss of a batch; see the class docstring for the inputs."""
        raise NotImplementedError

    @staticmethod
    def check_views(z_a: torch.Tensor, z_b: torch.Tensor) -> None:
        """Raise ``ValueError`` unless z_a and z_b are matching (B, k) batches with B >= 2."""
        if z_a.ndim != 2 or z_a.shape != z_b.shape:
            raise ValueError(
                f"the two views must be (B, k) tensors of equal shape, got {tuple(z_a.shape)} and {tuple(z_b.shape)}."
            )
        if z_a.shape[0] < 2:
            raise ValueError(
                "a contrastive loss needs a batch of at least 2 items (negatives come from the batch)."
            )
