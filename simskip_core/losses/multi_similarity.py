"""Multi-similarity contrastive loss (MSCon): one supervised-contrastive term per pair signal, uncertainty-weighted.

References: Mu, Guttag & Makar, "Multi-Similarity Contrastive Learning" (MSCon, arXiv 2307.02712);
the weighting follows Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh
Losses for Scene Geometry and Semantics" (arXiv 1705.07115).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from simskip_core.losses.base import ContrastiveLoss
from simskip_core.losses.ntxent import check_pair_mask, multi_positive_infonce, views_mask
from simskip_core.refiner import ACTIVATIONS, build_mlp

__all__ = ["VIEWS", "MSConLoss", "MultiSimilarityLoss"]

#: Name of the signal that is the plain augmentation pairing (always present).
VIEWS = "views"


class MSConLoss(ContrastiveLoss):
    """MSCon-style loss (arXiv 2307.02712): one contrastive term per similarity signal, learned weights.

    Registered as ``mscon``; ``multisimilarity`` (its name before 0.2) stays a synonym. It is not
    pytorch-metric-learning's ``MultiSimilarityLoss`` (Wang et al. 2019), a different pair-weighting loss.

    :meth:`setup` creates, for every signal c (``"views"`` first, then the given signal names), a
    projection head g_c (an MLP from the feature dimension to ``projection_dim``) and a learned
    log-standard-deviation s_c = log sigma_c, initialised to 0 (weight 1).

    For a batch, each signal's term is NT-Xent in its supervised-contrastive form on that signal's
    own projections of the pre-projector ``features`` (h_a, h_b):

        L_c = multi-positive InfoNCE over [g_c(h_a); g_c(h_b)] (cosine / temperature), positives =
              the other view of the same item, plus every item j with ``signals[c][i, j]``.

    ``"views"`` has no extra positives: L_views is plain NT-Xent on its own head. The terms are
    combined in the homoscedastic-uncertainty style of Kendall et al.:

        L = sum_c ( exp(-2 s_c) * L_c + s_c )      (= sum_c L_c / sigma_c^2 + log sigma_c)

    For fixed L_c the optimum is exp(-2 s_c) = 1 / (2 L_c), so a signal whose term stays high
    (a noisy or inconsistent similarity) is down-weighted. :meth:`weights` returns the current
    weights exp(-2 s_c) = 1 / sigma_c^2 by signal name. L can be negative; only its gradient matters.

    Inputs: needs ``features`` and ``signals`` (a (B, B) bool mask for every name given to
    :meth:`setup`; a ``"views"`` entry, if present, is ignored). The projections ``z_a``, ``z_b``
    from the refiner's shared projector are only shape-checked, and ``positives`` (the union of
    the signals) is ignored: each signal is used separately.

    Parameters are created by :meth:`setup`; call it before building the optimizer and before
    moving the loss to its device (``loss.to(device)``).

    Args:
        temperature: tau > 0 of every contrastive term.
        projection_dim: output size of each signal's projection head.
        hidden_dim: width of the heads' hidden layers (default: the feature dimension).
        depth: number of linear layers of each head (>= 1).
        activation: activation of the heads (``"relu"``, ``"gelu"``, ``"tanh"`` or ``"silu"``).
    """

    synonyms: ClassVar[frozenset[str]] = frozenset({"multisimilarity"})

    requires_signals = True

    def __init__(
        self,
        temperature: float = 0.5,
        *,
        projection_dim: int = 128,
        hidden_dim: int | None = None,
        depth: int = 2,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}; typical values are 0.05-1.0.")
        if projection_dim < 1:
            raise ValueError(f"projection_dim must be >= 1, got {projection_dim}.")
        if hidden_dim is not None and hidden_dim < 1:
            raise ValueError(f"hidden_dim must be >= 1 or None (the feature dimension), got {hidden_dim}.")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}.")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}.")
        self.temperature = float(temperature)
        self.projection_dim = projection_dim
        self.hidden_dim = hidden_dim
        self.depth = depth
        self.activation = activation
        self.feature_dim: int | None = None
        self.signal_names: tuple[str, ...] = ()
        self.heads = nn.ModuleList()
        self.log_sigma: nn.Parameter | None
        self.register_parameter("log_sigma", None)

    def extra_repr(self) -> str:
        """Show the hyperparameters and the signals in ``repr``."""
        return f"temperature={self.temperature}, projection_dim={self.projection_dim}, signals={self.signal_names}"

    def setup(self, *, feature_dim: int, signal_names: Sequence[str]) -> None:
        """Create one projection head and one log-sigma per signal (``"views"`` is always included).

        Calling it again re-creates all parameters (rebuild the optimizer afterwards).

        Args:
            feature_dim: dimension d of the pre-projector features (h_a, h_b).
            signal_names: names of the pair signals the trainer will pass in ``signals``.
        """
        if feature_dim < 1:
            raise ValueError(f"feature_dim must be >= 1, got {feature_dim}.")
        if isinstance(signal_names, str):
            raise TypeError(
                f"signal_names must be a sequence of names, got the string {signal_names!r}; wrap it in a list."
            )
        names = [VIEWS, *dict.fromkeys(n for n in signal_names if n != VIEWS)]
        if len(names) == 1:
            raise ValueError(
                "MSConLoss needs at least one pair signal besides 'views' (e.g. mutual k-NN, labels, "
                "graph edges); enable one in the trainer, or use NTXentLoss for augmentation-only training."
            )
        hidden = self.hidden_dim or feature_dim
        self.feature_dim = feature_dim
        self.signal_names = tuple(names)
        self.heads = nn.ModuleList(
            build_mlp(feature_dim, hidden, self.projection_dim, depth=self.depth, activation=self.activation)
            for _ in names
        )
        self.log_sigma = nn.Parameter(torch.zeros(len(names)))

    def _require_setup(self) -> nn.Parameter:
        if self.log_sigma is None:
            raise RuntimeError(
                "MSConLoss has no parameters yet; call loss.setup(feature_dim=..., signal_names=[...]) "
                "once before building the optimizer (the simskip trainer does this for you)."
            )
        return self.log_sigma

    def weights(self) -> dict[str, float]:
        """Current weight exp(-2 s_c) = 1 / sigma_c^2 of each signal's term, by signal name."""
        log_sigma = self._require_setup()
        return {
            name: math.exp(-2.0 * float(s)) for name, s in zip(self.signal_names, log_sigma.detach().cpu())
        }

    def summary(self) -> dict[str, float]:
        """The learned weights as ``{"weight:<signal>": 1 / sigma_c^2}`` (empty before :meth:`setup`)."""
        if self.log_sigma is None:
            return {}
        return {f"weight:{name}": value for name, value in self.weights().items()}

    def signal_losses(
        self, features: tuple[torch.Tensor, torch.Tensor], signals: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """(C,) unweighted contrastive term L_c of each signal, in the order of :attr:`signal_names`."""
        self._require_setup()
        if not isinstance(features, (tuple, list)) or len(features) != 2:
            raise ValueError(
                "features must be the pair (h_a, h_b) of pre-projector features of the two views."
            )
        h_a, h_b = features
        if h_a.ndim != 2 or h_a.shape != h_b.shape or h_a.shape[1] != self.feature_dim:
            raise ValueError(
                f"features must be two (B, {self.feature_dim}) tensors (feature_dim given to setup), "
                f"got {tuple(h_a.shape)} and {tuple(h_b.shape)}."
            )
        batch = h_a.shape[0]
        if batch < 2:
            raise ValueError(
                "a contrastive loss needs a batch of at least 2 items (negatives come from the batch)."
            )
        expected = set(self.signal_names) - {VIEWS}
        missing = sorted(expected - set(signals))
        unknown = sorted(set(signals) - expected - {VIEWS})
        if missing or unknown:
            raise ValueError(
                f"signals must hold a (B, B) mask for each of {sorted(expected)} (the names given to setup); "
                f"missing {missing}, unknown {unknown}. Call setup() again with the new signal names."
            )
        h = torch.cat([h_a, h_b], dim=0)  # (2B, d)
        terms = []
        for name, head in zip(self.signal_names, self.heads):
            extra = (
                None if name == VIEWS else check_pair_mask(signals[name], batch, name=f"signals[{name!r}]")
            )
            u = F.normalize(head(h), dim=1)  # (2B, projection_dim)
            logits = u @ u.T / self.temperature  # (2B, 2B)
            terms.append(multi_positive_infonce(logits, views_mask(batch, extra, h.device)))
        return torch.stack(terms)  # (C,)

    def forward(
        self,
        z_a: torch.Tensor,
        z_b: torch.Tensor,
        *,
        positives: torch.Tensor | None = None,
        features: tuple[torch.Tensor, torch.Tensor] | None = None,
        signals: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Return sum_c exp(-2 s_c) * L_c + s_c; needs ``features`` and ``signals`` (see the class docstring)."""
        if signals is None or features is None:
            missing = [
                name for name, value in (("signals", signals), ("features", features)) if value is None
            ]
            names = list(self.signal_names[1:]) or "each pair signal"
            raise ValueError(
                f"MSConLoss needs signals= (a dict of (B, B) bool masks, one for {names}) "
                f"and features= (the pre-projector features (h_a, h_b)); {' and '.join(missing)} missing. "
                "Train it with pair signals enabled, or use NTXentLoss for augmentation-only training."
            )
        log_sigma = self._require_setup()
        self.check_views(z_a, z_b)
        if z_a.shape[0] != features[0].shape[0]:
            raise ValueError(
                f"z_a has {z_a.shape[0]} rows but features[0] has {features[0].shape[0]}; pass the same batch."
            )
        losses = self.signal_losses(features, signals)  # (C,)
        return (torch.exp(-2.0 * log_sigma) * losses + log_sigma).sum()


#: The name of :class:`MSConLoss` before 0.2, kept for one release.
MultiSimilarityLoss = MSConLoss
