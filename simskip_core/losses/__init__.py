"""simskip losses, one per file, resolved by name, class or instance through :data:`loss_resolver`."""

from __future__ import annotations

from class_resolver import ClassResolver

from simskip_core.losses.base import ContrastiveLoss
from simskip_core.losses.ntxent import NTXentLoss

__all__ = ["ContrastiveLoss", "NTXentLoss", "loss_resolver"]

#: Resolves a loss from a name (e.g. "ntxent"), a class or an instance. Plugins add more through
#: the ``simskip_register_losses`` hook.
loss_resolver: ClassResolver[ContrastiveLoss] = ClassResolver(
    [NTXentLoss],
    base=ContrastiveLoss,
    default=NTXentLoss,
    suffix="Loss",
)
