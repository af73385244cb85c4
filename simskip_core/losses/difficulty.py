"""Difficulty-aware NT-Xent: flag difficult negative pairs of a batch and remove, margin-shift or sharpen them.

Reference: Zhang, Cui, Li & Wang, "Difficult Examples Hurt Unsupervised Contrastive Learning:
A Theoretical Perspective" (arXiv 2501.01317).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F

from simskip_core.losses.base import ContrastiveLoss
from simskip_core.losses.ntxent import multi_positive_infonce, views_mask

__all__ = ["TREATMENTS", "DifficultyAwareLoss", "percentile"]

#: Treatments of flagged negative pairs, by name.
TREATMENTS = ("removal", "margin", "temperature")


def percentile(values: torch.Tensor, q: float) -> torch.Tensor:
    """The ``q``-th percentile (0-100) of a 1-D tensor, linearly interpolated like ``numpy.percentile``.

    With n values in ascending order v_0 <= ... <= v_{n-1}, position p = q / 100 * (n - 1) and
    i = floor(p), the result is v_i + (v_{i+1} - v_i) * (p - i) (v_{n-1} at q = 100). The two order
    statistics come from :func:`torch.kthvalue` (a selection, no full sort; NaNs rank last, as in a
    sort; tested on CPU). Not :func:`torch.quantile`, which refuses inputs of more than 2**24 elements (a batch of
    2048 items already has 16.8 million pairs).

    Raises:
        ValueError: ``values`` is not a non-empty 1-D tensor, or ``q`` is not in [0, 100].
    """
    if values.ndim != 1 or values.numel() == 0:
        raise ValueError(
            f"percentile needs a non-empty 1-D tensor, got shape {tuple(values.shape)}; flatten it or select values first."
        )
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be a percentile in [0, 100], got {q}; it is not a fraction.")
    position = q / 100.0 * (values.numel() - 1)
    lo = math.floor(position)
    hi = min(lo + 1, values.numel() - 1)
    low = _order_statistic(values, lo)
    high = low if hi == lo else _order_statistic(values, hi)
    return low + (high - low) * (position - lo)


def _order_statistic(values: torch.Tensor, index: int) -> torch.Tensor:
    """The 0-based ``index``-th smallest of the 1-D ``values`` (``values.sort().values[index]``)."""
    return torch.kthvalue(values, index + 1).values


class DifficultyAwareLoss(ContrastiveLoss):
    """NT-Xent with special treatment of difficult negative pairs (arXiv 2501.01317).

    Detection. Let s_ij be the cosine similarity of the 2B stacked pre-projector features
    [h_a; h_b] (``features``; the projections [z_a; z_b] when ``features`` is None). A pair is a
    *candidate* when it is a negative of NT-Xent: i != j and not a positive (neither the other view
    nor a ``positives`` pair). With t_low and t_high the ``low_percentile``-th and
    ``high_percentile``-th percentiles of s over all candidates of the batch, a candidate is
    flagged difficult when

        p_ij = 1[t_low <= s_ij < t_high]

    (``high_percentile=100`` means no upper cut, t_high = +inf). Positives are never flagged. Flags
    are computed without gradient.

    The defaults (90, 99) flag the 90th-99th percentile band of negative similarities: the
    negatives closest to the anchor that are still likely to be of another class. The top 1 %
    is left alone because, without labels, the most similar "negatives" are mostly same-class
    pairs (false negatives), not the cross-class boundary pairs the paper calls difficult.

    Treatments, alone or combined (with cos_ij the cosine of the projections and tau the temperature):

    - ``"removal"``: flagged pairs are dropped from the softmax denominators.
    - ``"margin"``: logit (cos_ij + p_ij * sigma) / tau.
    - ``"temperature"``: logit cos_ij / ((p_ij * rho + 1 - p_ij) * tau), i.e. temperature rho * tau
      for flagged pairs.

    Margin and temperature combine as (cos_ij + p_ij * sigma) / ((p_ij * rho + 1 - p_ij) * tau);
    removal takes precedence over both for the pairs it drops. With ``treatments=()`` the loss equals
    :class:`~simskip_core.losses.ntxent.NTXentLoss` with the same temperature. ``positives`` adds
    positives exactly as in NT-Xent.

    Args:
        temperature: tau > 0 dividing the cosine similarities.
        low_percentile: lower detection threshold, a percentile in [0, 100) of the candidates' similarities.
        high_percentile: upper detection threshold, a percentile in (low_percentile, 100].
        treatments: any of ``"removal"``, ``"margin"``, ``"temperature"`` (a single name is accepted too).
        sigma: margin added to flagged cosines, >= 0 (the paper reports 0.1 working on CIFAR-100).
        rho: temperature factor of flagged pairs, > 0 (the paper reports 0.7 working on CIFAR-100).
    """

    synonyms: ClassVar[frozenset[str]] = frozenset({"difficulty"})

    def __init__(
        self,
        temperature: float = 0.5,
        *,
        low_percentile: float = 90.0,
        high_percentile: float = 99.0,
        treatments: str | Iterable[str] = ("margin", "temperature"),
        sigma: float = 0.1,
        rho: float = 0.7,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}; typical values are 0.05-1.0.")
        if not 0.0 <= low_percentile < high_percentile <= 100.0:
            raise ValueError(
                f"need 0 <= low_percentile < high_percentile <= 100, got low_percentile={low_percentile}, "
                f"high_percentile={high_percentile}; they are percentiles (e.g. 90 and 99), not fractions."
            )
        names = (treatments,) if isinstance(treatments, str) else tuple(treatments)
        unknown = sorted(set(names) - set(TREATMENTS))
        if unknown:
            raise ValueError(
                f"unknown treatment(s) {unknown}; choose any of {list(TREATMENTS)} (or () for plain NT-Xent)."
            )
        if not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"sigma (the margin) must be a finite number >= 0, got {sigma}.")
        if not (math.isfinite(rho) and rho > 0):
            raise ValueError(f"rho (the temperature factor) must be a finite number > 0, got {rho}.")
        self.temperature = float(temperature)
        self.low_percentile = float(low_percentile)
        self.high_percentile = float(high_percentile)
        self.treatments = tuple(t for t in TREATMENTS if t in names)
        self.sigma = float(sigma)
        self.rho = float(rho)

    def extra_repr(self) -> str:
        """Show the hyperparameters in ``repr``."""
        return (
            f"temperature={self.temperature}, low_percentile={self.low_percentile}, "
            f"high_percentile={self.high_percentile}, treatments={self.treatments}, "
            f"sigma={self.sigma}, rho={self.rho}"
        )

    @staticmethod
    def _stack_features(
        features: tuple[torch.Tensor, torch.Tensor] | None, z: torch.Tensor, batch: int
    ) -> torch.Tensor:
        """(2B, d) stacked detection inputs: [h_a; h_b], or the projections ``z`` when ``features`` is None."""
        if features is None:
            return z
        if not isinstance(features, (tuple, list)) or len(features) != 2:
            raise ValueError(
                "features must be the pair (h_a, h_b) of pre-projector features of the two views."
            )
        h_a, h_b = features
        if h_a.ndim != 2 or h_a.shape != h_b.shape or h_a.shape[0] != batch:
            raise ValueError(
                f"features must be two (B, d) tensors with B = {batch} (the batch of z_a, z_b), "
                f"got {tuple(h_a.shape)} and {tuple(h_b.shape)}."
            )
        return torch.cat([h_a, h_b], dim=0)

    def _flags(self, h: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """(2B, 2B) bool flags of difficult pairs among ``candidates`` from the cosine of the rows of ``h``."""
        with torch.no_grad():
            u = F.normalize(h.detach(), dim=1)
            sim = u @ u.T  # (2B, 2B)
            values = sim[candidates]  # (n_candidates,)
            if values.numel() == 0:
                return torch.zeros_like(candidates)
            t_low = percentile(values, self.low_percentile)
            if self.high_percentile >= 100.0:
                return candidates & (sim >= t_low)
            t_high = percentile(values, self.high_percentile)
            return candidates & (sim >= t_low) & (sim < t_high)

    def difficult_pairs(
        self,
        z_a: torch.Tensor,
        z_b: torch.Tensor,
        *,
        positives: torch.Tensor | None = None,
        features: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """(2B, 2B) bool mask of the pairs flagged difficult, over the stacked views [a; b].

        Same inputs as :meth:`forward`; useful to inspect how many pairs a setting flags.
        """
        self.check_views(z_a, z_b)
        batch = z_a.shape[0]
        pos = views_mask(batch, positives, z_a.device)  # (2B, 2B)
        eye = torch.eye(2 * batch, dtype=torch.bool, device=z_a.device)
        h = self._stack_features(features, torch.cat([z_a, z_b], dim=0), batch)
        return self._flags(h, ~pos & ~eye)

    def forward(
        self,
        z_a: torch.Tensor,
        z_b: torch.Tensor,
        *,
        positives: torch.Tensor | None = None,
        features: tuple[torch.Tensor, torch.Tensor] | None = None,
        signals: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Return the scalar difficulty-aware NT-Xent loss of the batch; ``signals`` is ignored."""
        self.check_views(z_a, z_b)
        batch = z_a.shape[0]
        pos = views_mask(batch, positives, z_a.device)  # (2B, 2B)
        eye = torch.eye(2 * batch, dtype=torch.bool, device=z_a.device)
        z = torch.cat([z_a, z_b], dim=0)  # (2B, k)
        flags = self._flags(self._stack_features(features, z, batch), ~pos & ~eye)  # (2B, 2B)

        u = F.normalize(z, dim=1)
        cos = u @ u.T  # (2B, 2B)
        if "margin" in self.treatments:
            cos = cos + self.sigma * flags.to(cos.dtype)
        if "temperature" in self.treatments:
            tau = torch.full_like(cos, self.temperature).masked_fill(
                flags, self.rho * self.temperature
            )  # (2B, 2B)
            logits = cos / tau
        else:
            logits = cos / self.temperature
        if "removal" in self.treatments:
            logits = logits.masked_fill(flags, float("-inf"))
        return multi_positive_infonce(logits, pos)
