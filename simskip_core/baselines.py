"""Label-free baselines behind one fit/transform interface, and the random-residual control.

Every baseline is also a torch module (:meth:`Baseline.module`), so a host integration applies a
baseline chosen by auto mode exactly as it applies a trained refiner.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from class_resolver import ClassResolver
from torch import nn

from simskip_core.refiner import SkipRefiner
from simskip_core.validation import as_matrix, check_dim

__all__ = [
    "PCA",
    "AffineMap",
    "AllButTheTop",
    "Baseline",
    "CenterL2",
    "Identity",
    "RandomResidual",
    "Whitening",
    "baseline_resolver",
]


class AffineMap(nn.Module):
    """y = (x - mean) @ weight, optionally L2-normalised; ``weight`` None means no projection."""

    mean: torch.Tensor
    weight: torch.Tensor | None

    def __init__(self, mean: torch.Tensor, weight: torch.Tensor | None, *, normalize: bool = False) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float())
        self.register_buffer("weight", None if weight is None else weight.float())
        self.normalize = normalize

    @property
    def out_dim(self) -> int:
        """Output dimension."""
        return int(self.mean.shape[0] if self.weight is None else self.weight.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(n, d) -> (n, out_dim)."""
        out = x - self.mean
        if self.weight is not None:
            out = out @ self.weight
        if self.normalize:
            out = F.normalize(out, dim=-1)
        return out


class Baseline:
    """Base class: ``fit(X)`` learns statistics from training embeddings, ``transform(X)`` maps them.

    Subclasses implement :meth:`_fit` returning the torch module that does the mapping.
    """

    def __init__(self) -> None:
        self.module_: nn.Module | None = None
        self.dim_: int | None = None

    def fit(self, x: Any) -> Baseline:
        """Fit on training embeddings (n, d)."""
        arr = as_matrix(x)
        self.dim_ = arr.shape[1]
        self.module_ = self._fit(torch.from_numpy(arr).double()).eval()
        return self

    def _fit(self, x: torch.Tensor) -> nn.Module:
        raise NotImplementedError

    def module(self) -> nn.Module:
        """The fitted mapping as a torch module (eval mode)."""
        if self.module_ is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(X) first.")
        return self.module_

    def transform(self, x: Any) -> np.ndarray:
        """Map embeddings (m, d) -> (m, d') as float32."""
        module = self.module()
        arr = as_matrix(x)
        assert self.dim_ is not None
        check_dim(arr, self.dim_, what=f"the fitted {type(self).__name__}")
        with torch.no_grad():
            return module(torch.from_numpy(arr)).numpy().astype(np.float32)

    def fit_transform(self, x: Any) -> np.ndarray:
        """``fit(x).transform(x)``."""
        return self.fit(x).transform(x)

    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments."""
        return {}


def _principal_axes(centred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and eigenvectors (columns) of the covariance of centred data (float64)."""
    cov = centred.T @ centred / max(centred.shape[0] - 1, 1)
    values, vectors = torch.linalg.eigh(cov)
    return values.flip(0).clamp(min=0), vectors.flip(1)


class Identity(Baseline):
    """The unchanged embeddings."""

    def _fit(self, x: torch.Tensor) -> nn.Module:
        return nn.Identity()


class CenterL2(Baseline):
    """Subtract the training mean, then L2-normalise each vector."""

    def _fit(self, x: torch.Tensor) -> nn.Module:
        return AffineMap(x.mean(0), None, normalize=True)


class Whitening(Baseline):
    """Whitening: centre, then scale each principal direction of the training data to unit variance.

    Only directions the training data actually spans are kept (eigenvalues above ``rel_tol`` times
    the largest; at most n - 1 of them): with fewer rows than dimensions the null space would
    otherwise be scaled by 1/sqrt(eps) and blow up every new vector.

    Args:
        k: keep at most the top-k principal directions (None: every spanned direction).
        eps: added to eigenvalues before the inverse square root.
        zca: rotate back into the input space (ZCA; keeps the dimension d, which hosts such as a
            sentence-transformers pipeline or a KG model need) instead of returning the k principal
            coordinates (PCA whitening). Distances and cosines are the same either way.
        rel_tol: eigenvalues below ``rel_tol * max`` count as outside the span.
    """

    def __init__(
        self, k: int | None = None, eps: float = 1e-6, zca: bool = True, rel_tol: float = 1e-6
    ) -> None:
        super().__init__()
        if k is not None and k < 1:
            raise ValueError(f"k must be >= 1 or None, got {k}.")
        self.k = k
        self.eps = eps
        self.zca = zca
        self.rel_tol = rel_tol

    def _fit(self, x: torch.Tensor) -> nn.Module:
        mean = x.mean(0)
        values, vectors = _principal_axes(x - mean)
        spanned = int((values > self.rel_tol * values[0].clamp(min=1e-300)).sum())
        k = max(1, min(spanned, x.shape[0] - 1, vectors.shape[1] if self.k is None else self.k))
        basis = vectors[:, :k]  # (d, k)
        weight = basis / torch.sqrt(values[:k] + self.eps)  # (d, k)
        if self.zca:
            weight = weight @ basis.T  # (d, d), rank k
        return AffineMap(mean, weight)

    def config(self) -> dict[str, Any]:
        return {"k": self.k, "eps": self.eps, "zca": self.zca, "rel_tol": self.rel_tol}


class AllButTheTop(Baseline):
    """All-but-the-top (Mu & Viswanath 2018): remove the mean and the top-D principal directions.

    Args:
        n_components: D; None uses the paper's rule of thumb max(1, d // 100).
    """

    def __init__(self, n_components: int | None = None) -> None:
        super().__init__()
        if n_components is not None and n_components < 0:
            raise ValueError(f"n_components must be >= 0 or None, got {n_components}.")
        self.n_components = n_components

    def _fit(self, x: torch.Tensor) -> nn.Module:
        mean = x.mean(0)
        d = x.shape[1]
        top = max(1, d // 100) if self.n_components is None else min(self.n_components, d)
        _, vectors = _principal_axes(x - mean)
        u = vectors[:, :top]
        return AffineMap(mean, torch.eye(d, dtype=u.dtype) - u @ u.T)

    def config(self) -> dict[str, Any]:
        return {"n_components": self.n_components}


class PCA(Baseline):
    """Project the centred embeddings onto their top-k principal directions.

    Args:
        k: number of components kept.
    """

    def __init__(self, k: int = 128) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}.")
        self.k = k

    def _fit(self, x: torch.Tensor) -> nn.Module:
        mean = x.mean(0)
        _, vectors = _principal_axes(x - mean)
        return AffineMap(mean, vectors[:, : min(self.k, vectors.shape[1])])

    def config(self) -> dict[str, Any]:
        return {"k": self.k}


class RandomResidual(Baseline):
    """The control: an untrained random residual map x + s * g(x), with s set so the mean displacement
    ||s * g(x)|| on the training data equals ``target_shift`` (e.g. a trained refiner's ``mean_shift``).

    A refiner's gain that this control matches is the effect of any small perturbation, not learning.

    Args:
        target_shift: mean L2 distance the map should move training embeddings.
        seed: seed of the random MLP.
        refiner_kwargs: architecture of g (same keywords as :class:`SkipRefiner`; default its defaults).
    """

    def __init__(
        self, target_shift: float, seed: int = 0, refiner_kwargs: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        if not np.isfinite(target_shift) or target_shift < 0:
            raise ValueError(f"target_shift must be a finite number >= 0, got {target_shift}.")
        self.target_shift = float(target_shift)
        self.seed = seed
        self.refiner_kwargs = dict(refiner_kwargs or {})

    def _fit(self, x: torch.Tensor) -> nn.Module:
        generator = torch.Generator().manual_seed(self.seed)
        refiner = SkipRefiner(x.shape[1], **self.refiner_kwargs)
        with torch.no_grad():
            for layer in refiner.g:
                if isinstance(layer, nn.Linear):
                    bound = 1.0 / np.sqrt(layer.in_features)
                    layer.weight.uniform_(-bound, bound, generator=generator)
                    layer.bias.uniform_(-bound, bound, generator=generator)
            refiner.eval()
            shift = refiner.residual(x.float()).norm(dim=1).mean().item()
            scale = self.target_shift / shift if shift > 0 else 0.0
            refiner.residual_scale = float(scale)
        return refiner

    def config(self) -> dict[str, Any]:
        return {"target_shift": self.target_shift, "seed": self.seed, "refiner_kwargs": self.refiner_kwargs}


#: Resolves baselines by name ("identity", "centerl2", "whitening", "allbutthetop" / "abtt", "pca",
#: "randomresidual"), class or instance.
baseline_resolver: ClassResolver[Baseline] = ClassResolver(
    [Identity, CenterL2, Whitening, AllButTheTop, PCA, RandomResidual],
    base=Baseline,
    synonyms={"abtt": AllButTheTop, "center_l2": CenterL2, "random_residual": RandomResidual},
)
