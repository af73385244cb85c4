"""NT-Xent (normalised temperature-scaled cross entropy) of SimCLR, with optional extra positives.

Reference: Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations"
(SimCLR, arXiv 2002.05709); the multi-positive form follows Khosla et al., "Supervised Contrastive
Learning" (arXiv 2004.11362).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from simskip_core.losses.base import ContrastiveLoss

__all__ = ["NTXentLoss", "check_pair_mask", "multi_positive_infonce", "views_mask"]


def check_pair_mask(mask: torch.Tensor, batch: int, *, name: str = "positives") -> torch.Tensor:
    """Return ``mask`` as a (B, B) bool tensor, or raise ``ValueError`` when it does not fit the batch.

    Non-bool masks are accepted and read as ``mask != 0``.

    Args:
        mask: the (B, B) pair mask to check.
        batch: the batch size B of the views it goes with.
        name: how the mask is called in error messages (e.g. ``"positives"`` or ``"signals['labels']"``).
    """
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a (B, B) bool torch.Tensor, got {type(mask).__name__}.")
    if mask.shape != (batch, batch):
        raise ValueError(
            f"{name} must be a ({batch}, {batch}) mask matching the batch of {batch} views, "
            f"got shape {tuple(mask.shape)}; build it from the same batch indices as z_a and z_b."
        )
    return mask if mask.dtype == torch.bool else mask != 0


def multi_positive_infonce(logits: torch.Tensor, positive_mask: torch.Tensor) -> torch.Tensor:
    """Mean over anchors of -mean_{p in P(i)} log softmax_i(p), self-similarity excluded.

    Entries of ``logits`` equal to ``-inf`` drop out of the denominators (the difficulty-aware loss
    uses this to remove pairs). An anchor without positives contributes 0.

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
    """(2B, 2B) positive mask over the stacked views [a; b]: each item's other view, plus ``positives`` in all four blocks.

    Args:
        batch: the batch size B.
        positives: optional (B, B) mask of extra positive items (diagonal ignored).
        device: where to build the mask.
    """
    eye = torch.eye(batch, dtype=torch.bool, device=device)
    items = eye if positives is None else eye | check_pair_mask(positives, batch).to(device=device)
    mask = items.repeat(2, 2)  # (2B, 2B)
    return mask & ~torch.eye(2 * batch, dtype=torch.bool, device=device)


class NTXentLoss(ContrastiveLoss):
    """NT-Xent / InfoNCE over 2B projections (SimCLR, arXiv 2002.05709).

    The positive of each view is the other view of the same item; the other 2B - 2 projections are
    negatives. Symmetric in the two views. Projections are L2-normalised, so the loss is invariant
    to rescaling them.

    With ``positives`` it becomes the supervised-contrastive form (Khosla et al. 2020,
    arXiv 2004.11362): every projection of a positive item counts as a positive, and the loss
    averages -log softmax over them.

    Args:
        temperature: tau > 0 dividing the cosine similarities.
    """

    def __init__(self, temperature: float = 0.5) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}; typical values are 0.05-1.0.")
        self.temperature = float(temperature)

    def extra_repr(self) -> str:
        """Show the temperature in ``repr``."""
        return f"temperature={self.temperature}"

    def forward(
        self,
        z_a: torch.Tensor,
        z_b: torch.Tensor,
        *,
        positives: torch.Tensor | None = None,
        features: tuple[torch.Tensor, torch.Tensor] | None = None,
        signals: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Return the scalar NT-Xent loss of the batch; ``features`` and ``signals`` are ignored."""
        self.check_views(z_a, z_b)
        batch = z_a.shape[0]
        z = F.normalize(torch.cat([z_a, z_b], dim=0), dim=1)  # (2B, k)
        logits = z @ z.T / self.temperature  # (2B, 2B)
        return multi_positive_infonce(logits, views_mask(batch, positives, z.device))
