"""simskip losses, one per file, resolved by name, class or instance through :data:`loss_resolver`.

Registered names: ``ntxent``, ``studentt``, ``spectralcontrastive`` (synonym ``spectral``),
``difficultyaware`` (synonym ``difficulty``) and ``mscon`` (synonym ``multisimilarity``, its name
before 0.2). Names are matched
case-insensitively, ignoring ``-``, ``_``, spaces and a trailing ``Loss``; synonyms come from
each class's ``synonyms`` attribute.
"""

from __future__ import annotations

from simskip_core.augment import PluginResolver
from simskip_core.losses.base import ContrastiveLoss
from simskip_core.losses.difficulty import DifficultyAwareLoss
from simskip_core.losses.multi_similarity import MSConLoss, MultiSimilarityLoss
from simskip_core.losses.ntxent import NTXentLoss
from simskip_core.losses.spectral import SpectralContrastiveLoss
from simskip_core.losses.student_t import StudentTLoss

__all__ = [
    "ContrastiveLoss",
    "DifficultyAwareLoss",
    "MSConLoss",
    "MultiSimilarityLoss",
    "NTXentLoss",
    "SpectralContrastiveLoss",
    "StudentTLoss",
    "loss_resolver",
]

#: Resolves a loss from a name (e.g. "ntxent"), a class or an instance. Plugins add more through
#: the ``simskip_register_losses`` hook; a name that misses loads the plugins first, then lists the
#: valid names.
loss_resolver: PluginResolver[ContrastiveLoss] = PluginResolver(
    [NTXentLoss, StudentTLoss, SpectralContrastiveLoss, DifficultyAwareLoss, MSConLoss],
    base=ContrastiveLoss,
    default=NTXentLoss,
    suffix="Loss",
    kind="loss",
    hook="simskip_register_losses",
)
