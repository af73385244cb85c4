"""Spectral contrastive loss: a contrastive objective whose minimiser is a spectral embedding.

Reference: HaoChen, Wei, Gaidon & Ma, "Provable Guarantees for Self-Supervised Deep Learning with
Spectral Contrastive Loss" (NeurIPS 2021, arXiv 2106.04156).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch

from simskip_core.losses.base import ContrastiveLoss
from simskip_core.losses.ntxent import check_pair_mask

__all__ = ["SpectralContrastiveLoss", "clip_norm"]


def clip_norm(z: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Project each row of ``z`` (N, k) onto the ball of radius ``max_norm`` (rows inside are unchanged)."""
    norms = z.norm(dim=1, keepdim=True)  # (N, 1)
    scale = torch.clamp(max_norm / norms.clamp_min(1e-12), max=1.0)  # (N, 1)
    return z * scale


class SpectralContrastiveLoss(ContrastiveLoss):
    """Spectral contrastive loss of HaoChen et al. (arXiv 2106.04156), estimated on a batch.

    With P the set of positive item pairs (always the augmentation pairs (i, i); with ``positives``
    also every (i, j), i != j, where ``positives[i, j]`` is True, each ordered pair counted once):

        L = -2 * mean_{(i, j) in P} z_a_i . z_b_j  +  mean_{i != j} (z_a_i . z_b_j) ** 2

    Scaling: both terms are plain means (not sums), so L estimates the population loss
    -2 E[f(x)^T f(x+)] + E[(f(x)^T f(x'))^2] without a batch-size factor. The first mean runs over
    |P| pairs (B without ``positives``) and weighs every positive pair equally, so extra positives
    share the attractive term with the augmentation pairs. The second runs over the B(B-1)
    cross-view pairs of distinct items, *including* pairs flagged in ``positives``: in the
    population loss x and x' are independent draws, which are sometimes positives too.
    Swapping the two views leaves the loss unchanged whenever ``positives`` is symmetric.

    Unlike NT-Xent the loss depends on the norm of the projections. As in the authors' reference
    code (their ``mu`` = ``max_norm ** 2``), rows longer than ``max_norm`` are first projected onto
    the ball of that radius, which bounds the loss below by -2 max_norm^2; ``max_norm=None``
    uses the raw projections.

    Args:
        max_norm: radius of the ball the projections are clipped to (> 0), or None for no clipping.
    """

    synonyms: ClassVar[frozenset[str]] = frozenset({"spectral"})

    def __init__(self, max_norm: float | None = 1.0) -> None:
        super().__init__()
        if max_norm is not None and not max_norm > 0:
            raise ValueError(f"max_norm must be > 0 or None (no clipping), got {max_norm}.")
        self.max_norm = None if max_norm is None else float(max_norm)

    def extra_repr(self) -> str:
        """Show the clipping radius in ``repr``."""
        return f"max_norm={self.max_norm}"

    def forward(
        self,
        z_a: torch.Tensor,
        z_b: torch.Tensor,
        *,
        positives: torch.Tensor | None = None,
        features: tuple[torch.Tensor, torch.Tensor] | None = None,
        signals: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Return the scalar spectral contrastive loss of the batch; ``features`` and ``signals`` are ignored."""
        self.check_views(z_a, z_b)
        batch = z_a.shape[0]
        if self.max_norm is not None:
            z_a, z_b = clip_norm(z_a, self.max_norm), clip_norm(z_b, self.max_norm)
        dots = z_a @ z_b.T  # (B, B): dots[i, j] = z_a_i . z_b_j
        eye = torch.eye(batch, dtype=torch.bool, device=dots.device)  # (B, B)
        pos = eye if positives is None else eye | check_pair_mask(positives, batch).to(dots.device)
        attract = dots[pos].mean()  # mean over |P| positive pairs
        repel = dots[~eye].pow(2).mean()  # mean over the B(B-1) pairs i != j
        return -2.0 * attract + repel
