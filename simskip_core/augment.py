"""Embedding-space augmentations: feature masking and per-dimension Gaussian noise, composable and seeded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import torch
from class_resolver import ClassResolver, Hint, HintOrType

__all__ = [
    "Augmentation",
    "Compose",
    "FeatureMask",
    "GaussianNoise",
    "PluginResolver",
    "UnknownNameError",
    "augmentation_resolver",
    "build_augmentation",
]

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name that no built-in class and no loaded plugin registers; the message lists the valid names."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class PluginResolver(ClassResolver[T], Generic[T]):
    """A :class:`~class_resolver.ClassResolver` whose name lookup loads the simskip plugins on a miss.

    Plugins register classes through a hook (``simskip_register_losses``,
    ``simskip_register_augmentations``) when the plugin manager is created, so a plugin's name is
    unknown until then. A lookup that misses creates the manager once
    (:func:`simskip_core.plugins.get_plugin_manager`, which honours ``SIMSKIP_DISABLE_PLUGIN_AUTOLOAD``)
    and retries; a name that still misses raises :class:`UnknownNameError` listing the valid names.

    Args:
        classes, base, default, suffix, synonyms: as for :class:`~class_resolver.ClassResolver`.
        kind: what the classes are, for messages ("loss", "augmentation").
        hook: the hook through which plugins register more classes, for messages.
    """

    def __init__(self, *args: Any, kind: str, hook: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kind = kind
        self.hook = hook

    def lookup(self, query: HintOrType[T], default: type[T] | None = None) -> type[T]:
        """The class for ``query`` (a name, class or instance); a missed name loads the plugins first."""
        try:
            return super().lookup(query, default)
        except KeyError:
            if not isinstance(query, str):
                raise
        _load_plugins()
        try:
            return super().lookup(query, default)
        except KeyError:
            raise UnknownNameError(self._unknown(query)) from None

    def _unknown(self, query: str) -> str:
        names = ", ".join(sorted(self.options))
        return (
            f"unknown {self.kind} {query!r}; valid names: {names} "
            f"(installed plugins add more through the {self.hook} hook; `simskip plugins` lists them)."
        )


def _load_plugins() -> None:
    """Create the plugin manager, which loads the entry points and registers their classes."""
    from simskip_core.plugins import get_plugin_manager  # seam: engine -> plugin host, on a miss only

    get_plugin_manager()


class Augmentation:
    """Base class: a random map of a batch of embeddings (B, d) -> (B, d), driven by a torch Generator.

    ``fit`` sees the training embeddings once (e.g. to measure per-dimension spread);
    ``config`` returns the constructor arguments so the augmentation can be saved as JSON.
    """

    def fit(self, x: torch.Tensor) -> Augmentation:
        """Learn data statistics from the training embeddings (n, d); default: nothing to learn."""
        return self

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments."""
        return {}


class FeatureMask(Augmentation):
    """Zero each feature independently with probability ``1 - keep_prob`` (a fresh mask per row).

    Args:
        keep_prob: probability that a feature is kept, in (0, 1].
    """

    def __init__(self, keep_prob: float = 0.8) -> None:
        if not 0.0 < keep_prob <= 1.0:
            raise ValueError(f"keep_prob must be in (0, 1], got {keep_prob}.")
        self.keep_prob = keep_prob

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        keep = torch.rand(x.shape, generator=generator, device=x.device) < self.keep_prob  # (B, d)
        return x * keep

    def config(self) -> dict[str, Any]:
        return {"keep_prob": self.keep_prob}


class GaussianNoise(Augmentation):
    """Add N(0, (scale * std_j)^2) noise to feature j, where std_j is measured on the training data.

    Args:
        scale: noise level relative to each dimension's standard deviation (>= 0).
    """

    def __init__(self, scale: float = 0.5) -> None:
        if scale < 0:
            raise ValueError(f"scale must be >= 0, got {scale}.")
        self.scale = scale
        self.std: torch.Tensor | None = None

    def fit(self, x: torch.Tensor) -> GaussianNoise:
        self.std = x.std(dim=0, unbiased=False) if x.shape[0] > 1 else torch.ones(x.shape[1])  # (d,)
        return self

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.std is None:
            raise RuntimeError(
                "GaussianNoise must be fitted on the training embeddings before use; call fit(x)."
            )
        noise = torch.randn(x.shape, generator=generator, device=x.device)  # (B, d)
        return x + noise * (self.scale * self.std.to(x.device))

    def config(self) -> dict[str, Any]:
        return {"scale": self.scale}


class Compose(Augmentation):
    """Apply several augmentations in order."""

    def __init__(self, augmentations: Sequence[Augmentation]) -> None:
        self.augmentations = list(augmentations)

    def fit(self, x: torch.Tensor) -> Compose:
        for aug in self.augmentations:
            aug.fit(x)
        return self

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for aug in self.augmentations:
            x = aug(x, generator)
        return x

    def config(self) -> dict[str, Any]:
        return {
            "augmentations": [
                [augmentation_resolver.normalize_inst(a), a.config()] for a in self.augmentations
            ]
        }


#: Resolves augmentations by name ("featuremask" / "mask", "gaussiannoise" / "noise"), class or instance.
augmentation_resolver: PluginResolver[Augmentation] = PluginResolver(
    [FeatureMask, GaussianNoise],
    base=Augmentation,
    synonyms={"mask": FeatureMask, "noise": GaussianNoise},
    kind="augmentation",
    hook="simskip_register_augmentations",
)


def build_augmentation(
    spec: Hint[Augmentation] | Sequence[Hint[Augmentation] | tuple[str, dict[str, Any]]],
) -> Compose:
    """Build a :class:`Compose` from a name, class, instance, or a sequence of those or (name, kwargs) pairs."""
    if spec is None:
        return Compose([])
    items = [spec] if isinstance(spec, str | type | Augmentation) else list(spec)
    built: list[Augmentation] = []
    for item in items:
        if isinstance(item, tuple | list):
            name, kwargs = item
            built.append(augmentation_resolver.make(name, kwargs))
        else:
            built.append(augmentation_resolver.make(item))
    return Compose(built)
