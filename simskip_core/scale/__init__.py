"""Scale-out: ``torch.distributed`` helpers the trainer sits on, the streaming ``.npy`` apply, and batch apply for data engines.

:mod:`simskip_core.scale.distributed` is a leaf (torch only); :mod:`simskip_core.scale.stream` applies a
saved model to inputs larger than memory through :func:`simskip_core.apply.apply_module`;
:mod:`simskip_core.scale.batches` (:class:`RefineBatches`, for Ray Data's ``map_batches`` and Spark's
``mapInPandas``) and :mod:`simskip_core.scale.parquet` (:func:`refine_parquet`) refine tables, importing
pyarrow and pandas only when used.
"""

from __future__ import annotations

from simskip_core.lazy import lazy_exports

__all__ = [
    "NpySource",
    "RefineBatches",
    "RefineSummary",
    "StreamResult",
    "init_distributed",
    "refine_parquet",
    "stream_apply",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "NpySource": "simskip_core.scale.stream",
        "StreamResult": "simskip_core.scale.stream",
        "stream_apply": "simskip_core.scale.stream",
        "init_distributed": "simskip_core.scale.distributed",
        "RefineBatches": "simskip_core.scale.batches",
        "RefineSummary": "simskip_core.scale.parquet",
        "refine_parquet": "simskip_core.scale.parquet",
    },
)
