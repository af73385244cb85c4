"""simskip core: a contrastive refinement stage (SimSkip, arXiv 2404.08701) for frozen embeddings.

Quick start::

    from simskip_core import SimSkip
    model = SimSkip(epochs=20).fit(X)          # X: (n, d) float array
    refined = model.transform(X)
    model.save("my-refiner"); SimSkip.load("my-refiner")
"""

from __future__ import annotations

__version__ = "0.1.0"

from simskip_core.api import SimSkip
from simskip_core.embeddings import EmbeddingSet
from simskip_core.hooks import hookimpl
from simskip_core.refiner import SkipRefiner

__all__ = ["EmbeddingSet", "SimSkip", "SkipRefiner", "__version__", "hookimpl"]
