"""simskip core: a contrastive refinement stage (SimSkip, arXiv 2404.08701) for frozen embeddings.

Quick start::

    from simskip_core import SimSkip
    model = SimSkip(epochs=20).fit(X)          # X: (n, d) float array
    refined = model.transform(X)
    model.save("my-refiner"); SimSkip.load("my-refiner")
"""

from __future__ import annotations

__version__ = "0.1.0"

from simskip_core.lazy import lazy_exports

__all__ = ["EmbeddingSet", "SimSkip", "SkipRefiner", "__version__", "attach", "extract", "hookimpl"]

# Names are imported on first use, so ``import simskip_core`` (and ``simskip --help``) stays cheap.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "EmbeddingSet": "simskip_core.embeddings",
        "SimSkip": "simskip_core.api",
        "SkipRefiner": "simskip_core.refiner",
        "attach": "simskip_core.host",
        "extract": "simskip_core.host",
        "hookimpl": "simskip_core.hooks",
    },
)
