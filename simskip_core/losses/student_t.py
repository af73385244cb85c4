"""t-SimCLR: InfoNCE with a heavy-tailed Student-t similarity kernel on batch-standardised projections.

Reference: Böhm, Berens & Kobak, "Unsupervised visualization of image datasets using contrastive
learning" (t-SimCLR, arXiv 2205.14814).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from simskip_core.losses.base import ContrastiveLoss
from simskip_core.losses.ntxent import multi_positive_infonce, views_mask

__all__ = ["StudentTLoss", "batch_standardize", "squared_distances"]


def batch_standardize(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Standardise each column of ``z`` (N, k) to mean 0 and variance 1 over the batch (no affine part).

    Like ``BatchNorm1d(affine=False)`` in training mode: the variance is the biased one and ``eps``
    is added to it before the square root, so a constant column maps to 0 instead of NaN.
    """
    mean = z.mean(dim=0, keepdim=True)  # (1, k)
    var = z.var(dim=0, unbiased=False, keepdim=True)  # (1, k)
    return (z - mean) / torch.sqrt(var + eps)  # (N, k)


def squared_distances(z: torch.Tensor) -> torch.Tensor:
    """(N, N) squared Euclidean distances between the rows of ``z`` (N, k), clamped at 0."""
    sq = (z * z).sum(dim=1)  # (N,)
    return (sq[:, None] + sq[None, :] - 2.0 * (z @ z.T)).clamp_min(0.0)  # (N, N)


class StudentTLoss(ContrastiveLoss):
    """t-SimCLR loss (arXiv 2205.14814): InfoNCE whose similarity is a Student-t kernel.

    The 2B projections [z_a; z_b] are standardised per dimension over the batch (zero mean, unit
    variance; not L2-normalised), then each pair gets the kernel

        q_ij = (1 + ||z_i - z_j||^2 / (tau * nu)) ** (-(nu + 1) / 2)

    and ``log q_ij`` takes the place of ``cos_ij / tau`` as the logit of NT-Xent: for anchor i with
    positive set P(i) the loss is -mean_{p in P(i)} log(q_ip / sum_{j != i} q_ij), averaged over
    the 2B anchors. ``nu = 1`` is the Cauchy kernel of t-SimCLR; ``nu -> inf`` approaches the
    Gaussian kernel exp(-||z_i - z_j||^2 / (2 tau)). Because of the standardisation the loss is
    invariant to a per-dimension shift and a per-dimension positive rescaling of the projections.

    ``positives`` works as in :class:`~simskip_core.losses.ntxent.NTXentLoss` (supervised-contrastive
    averaging over every projection of a positive item).

    Args:
        nu: degrees of freedom of the kernel, > 0 (smaller = heavier tails).
        temperature: tau > 0 scaling the squared distances.
        eps: added to the per-dimension variance before dividing (numerical safety).
    """

    def __init__(self, nu: float = 1.0, temperature: float = 1.0, eps: float = 1e-5) -> None:
        super().__init__()
        if not nu > 0:
            raise ValueError(
                f"nu (degrees of freedom) must be > 0, got {nu}; nu=1 is the Cauchy kernel of t-SimCLR."
            )
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}; it scales the squared distances.")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}; it keeps the standardisation finite.")
        self.nu = float(nu)
        self.temperature = float(temperature)
        self.eps = float(eps)

    def extra_repr(self) -> str:
        """Show the hyperparameters in ``repr``."""
        return f"nu={self.nu}, temperature={self.temperature}"

    def log_kernel(self, z: torch.Tensor) -> torch.Tensor:
        """(N, N) log Student-t kernel between the rows of the already standardised ``z`` (N, k)."""
        d2 = squared_distances(z)  # (N, N)
        return -0.5 * (self.nu + 1.0) * torch.log1p(d2 / (self.temperature * self.nu))  # (N, N)

    def forward(
        self,
        z_a: torch.Tensor,
        z_b: torch.Tensor,
        *,
        positives: torch.Tensor | None = None,
        features: tuple[torch.Tensor, torch.Tensor] | None = None,
        signals: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Return the scalar t-SimCLR loss of the batch; ``features`` and ``signals`` are ignored."""
        self.check_views(z_a, z_b)
        batch = z_a.shape[0]
        z = batch_standardize(torch.cat([z_a, z_b], dim=0), eps=self.eps)  # (2B, k)
        logits = self.log_kernel(z)  # (2B, 2B)
        return multi_positive_infonce(logits, views_mask(batch, positives, z.device))
