"""NT-Xent (normalised temperature-scaled cross entropy) of SimCLR, with optional extra positives."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from simskip_core.losses.base import ContrastiveLoss

__all__ = ["NTXentLoss", "multi_positive_infonce"]


def multi_positive_infonce(logits: torch.Tensor, positive_mask: torch.Tensor) -> torch.Tensor:
    """Mean over anchors of -mean_{p in P(i)} log softmax_i(p), self-similarity excluded.

    Args:
        logits: (N, N) similarity logits; the diagonal (self) is excluded from every denominator.
        positive_mask: (N, N) bool, True for positives of each anchor (diagonal ignored).
    """
    n = logits.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)  # (N, N)
    pos = positive_mask & ~eye
    n_pos = pos.sum(dim=1).clamp(min=1)
    per_anchor = -(log_prob.masked_fill(~pos, 0.0)).sum(dim=1) / n_pos  # (N,)
    return per_anchor.mean()


def views_mask(batch: int, positives: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """(2B, 2B) positive mask over the stacked views [a; b]: each item's other view, plus ``positives`` in all four blocks."""
    eye = torch.eye(batch, dtype=torch.bool, device=device)
    items = eye if positives is None else eye | positives.to(device=device, dtype=torch.bool)
    mask = items.repeat(2, 2)  # (2B, 2B)
    return mask & ~torch.eye(2 * batch, dtype=torch.bool, device=device)


class NTXentLoss(ContrastiveLoss):
    """NT-Xent / InfoNCE over 2B projections: the positive of each view is the other view of the same
    item; the other 2B - 2 projections are negatives. Symmetric in the two views.

    With ``positives`` it becomes the supervised-contrastive form (Khosla et al. 2020): every
    projection of a positive item counts as a positive, and the loss averages over them.

    Args:
        temperature: tau > 0 dividing the cosine similarities.
    """

    def __init__(self, temperature: float = 0.5) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.temperature = temperature

    def forward(
        self,
        z_a: torch.Tensor,
        z_b: torch.Tensor,
        *,
        positives: torch.Tensor | None = None,
        features: tuple[torch.Tensor, torch.Tensor] | None = None,
        signals: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        self.check_views(z_a, z_b)
        batch = z_a.shape[0]
        z = F.normalize(torch.cat([z_a, z_b], dim=0), dim=1)  # (2B, k)
        logits = z @ z.T / self.temperature  # (2B, 2B)
        return multi_positive_infonce(logits, views_mask(batch, positives, z.device))
