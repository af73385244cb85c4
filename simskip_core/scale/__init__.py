"""Scale-out: ``torch.distributed`` helpers the trainer sits on, and the streaming ``.npy`` apply.

:mod:`simskip_core.scale.distributed` is a leaf (torch only); :mod:`simskip_core.scale.stream` applies a
saved model to inputs larger than memory through :func:`simskip_core.apply.apply_module`.
"""

from __future__ import annotations

from simskip_core.lazy import lazy_exports

__all__ = ["NpySource", "StreamResult", "init_distributed", "stream_apply"]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "NpySource": "simskip_core.scale.stream",
        "StreamResult": "simskip_core.scale.stream",
        "stream_apply": "simskip_core.scale.stream",
        "init_distributed": "simskip_core.scale.distributed",
    },
)
