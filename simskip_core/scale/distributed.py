"""Scaling out on ``torch.distributed``: process-group setup under ``torchrun``, a gradient-keeping gather.

simskip does not ship an engine of its own. Training runs under ``torchrun`` with PyTorch's
DistributedDataParallel (gloo on CPU, nccl on GPU); :func:`simskip_core.train.fit_refiner` switches to
it by itself when a process group is initialised (``TrainConfig.distributed``). Negatives are shared
across ranks by :func:`gather_with_grad`, in the style of lightly's ``gather_distributed``: every rank
sees the projections of the whole global batch, computes the loss on it, and the backward pass
all-reduces the gradients of the gathered tensors so that, after DDP's averaging, every parameter gets
exactly the gradient of the single-process loss on the concatenated batch.

Command line (one process per GPU or per CPU socket): the ``simskip`` CLI initialises the process
group itself when torchrun sets ``RANK``::

    torchrun --nproc_per_node=2 -m simskip_core refine emb.npy --save-model my-refiner
    torchrun --nproc_per_node=2 -m simskip_core refine emb.npy refined.npy --model my-refiner --stream

Training reads the input as a memmap (every rank reads only the rows of its slice of each batch);
``--stream`` applies the model with each rank writing a disjoint row range of one output file (see
:mod:`simskip_core.scale.stream`). Only rank 0 writes checkpoints and the saved model.

This module is a leaf: it imports only torch and numpy, and the trainer sits on it.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "barrier",
    "broadcast_float",
    "default_device",
    "destroy_distributed",
    "dist_info",
    "gather_with_grad",
    "gather_without_grad",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "resolve_device",
    "split_sizes",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    Attributes:
        rank: global rank (0 is the main process).
        world_size: number of processes.
        local_rank: rank on this node (selects the GPU).
        backend: the process group's backend ("gloo", "nccl") or None when not distributed.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes checkpoints, models and reports."""
        return self.rank == 0


def is_distributed() -> bool:
    """True when a torch.distributed process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def dist_info() -> DistInfo:
    """This process's rank and world size (rank 0 of 1 when no process group is initialised)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            backend=str(dist.get_backend()),
        )
    return DistInfo()


def is_main_process() -> bool:
    """True on rank 0 or when not distributed: guard model saving and reporting with it."""
    return dist_info().is_main


def default_device(info: DistInfo | None = None) -> torch.device:
    """The device this process should compute on: its local GPU when CUDA is available, else the CPU."""
    info = info or dist_info()
    if torch.cuda.is_available():
        return torch.device("cuda", info.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def resolve_device(device: str | torch.device | None, info: DistInfo | None = None) -> torch.device:
    """``device`` as a torch device, or :func:`default_device` when None; ``RuntimeError`` (one line, with
    the fix) when CUDA is asked for on a machine without it."""
    if device is None:
        return default_device(info)
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was asked for but CUDA is not available; pass device='cpu'.")
    return resolved


def init_distributed(backend: str | None = None, *, timeout_minutes: float = 30.0) -> DistInfo:
    """Initialise the default process group from ``torchrun``'s environment and return this rank's place.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` (``torchrun`` sets
    them). Without them (a plain ``python`` run) nothing is initialised and rank 0 of 1 is returned, so
    the same script runs with and without ``torchrun``. An already initialised group is reused.

    Args:
        backend: "gloo" or "nccl"; default nccl when CUDA is available, else gloo.
        timeout_minutes: how long collectives wait for a slow or dead rank before failing.
    """
    if not dist.is_available():
        raise RuntimeError(
            "this torch build has no torch.distributed; install a standard PyTorch wheel to train on several processes."
        )
    if dist.is_initialized():
        return dist_info()
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo()
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"RANK and WORLD_SIZE are set but {', '.join(missing)} is not; launch with torchrun, which sets all of them."
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise RuntimeError("backend 'nccl' needs CUDA GPUs; use backend='gloo' on CPU machines.")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    return dist_info()


def destroy_distributed() -> None:
    """Tear down the default process group if one is initialised (call at the end of a torchrun script)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_float(value: float, *, src: int = 0, device: torch.device | None = None) -> float:
    """Rank ``src``'s ``value`` on every rank (no-op when not distributed); sent as a tensor, never pickled."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device or torch.device("cpu"))
    dist.broadcast(tensor, src=src)
    return float(tensor.item())


def split_sizes(total: int, world_size: int) -> list[int]:
    """Rows of a ``total``-row batch that each rank takes: contiguous, in rank order, sizes differing by at most one."""
    base, extra = divmod(total, world_size)
    return [base + (1 if r < extra else 0) for r in range(world_size)]


def _pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    if tensor.shape[0] == rows:
        return tensor.contiguous()
    pad = tensor.new_zeros((rows - tensor.shape[0], *tensor.shape[1:]))
    return torch.cat([tensor, pad], dim=0)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward all-reduces the gradients of every gathered piece and keeps this rank's."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(outputs, tensor.contiguous())
        return tuple(outputs)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> torch.Tensor:
        stacked = torch.stack([g.contiguous() for g in grads])
        dist.all_reduce(stacked)  # sum over ranks of each rank's d(loss)/d(piece)
        return stacked[dist.get_rank()]


def gather_with_grad(tensor: torch.Tensor, sizes: Sequence[int] | None = None) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` (rows n_r, ...) along dim 0 in rank order, keeping gradients.

    The result is the same on every rank. Gradients follow lightly's ``gather_distributed``: the
    backward pass sums, over ranks, the gradient each rank's loss sends to every piece and returns the
    local piece's share. When every rank computes the same loss L on the gathered batch, the local
    input thus receives ``world_size * dL/d(piece)``, and DDP's gradient averaging turns that into
    exactly the single-process gradient of L on the concatenated batch; parameters used after the
    gather (a loss's own heads) get dL/dθ on every rank, which the averaging leaves unchanged.

    Args:
        tensor: this rank's rows; the same trailing shape and dtype on every rank.
        sizes: rows of every rank when known (skips one collective); ranks may hold different numbers
            of rows, even zero.
    """
    if not is_distributed():
        return tensor
    world = dist.get_world_size()
    sizes = list(sizes) if sizes is not None else _gather_sizes(tensor)
    if len(sizes) != world or sizes[dist.get_rank()] != tensor.shape[0]:
        raise ValueError(
            f"sizes {sizes} do not match a world of {world} ranks where this rank (rank {dist.get_rank()}) holds "
            f"{tensor.shape[0]} rows; pass the row count of every rank in rank order."
        )
    padded = _pad_rows(tensor, max(sizes))
    pieces = _GatherWithGrad.apply(padded)
    return torch.cat([piece[:n] for piece, n in zip(pieces, sizes)], dim=0)


def gather_without_grad(tensor: torch.Tensor, sizes: Sequence[int] | None = None) -> torch.Tensor:
    """Like :func:`gather_with_grad` for tensors that need no gradient (row indices, labels)."""
    if not is_distributed():
        return tensor
    sizes = list(sizes) if sizes is not None else _gather_sizes(tensor)
    padded = _pad_rows(tensor.detach(), max(sizes))
    pieces = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(pieces, padded)
    return torch.cat([piece[:n] for piece, n in zip(pieces, sizes)], dim=0)


def _gather_sizes(tensor: torch.Tensor) -> list[int]:
    local = torch.tensor([tensor.shape[0]], dtype=torch.int64, device=tensor.device)
    sizes = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, local)
    return [int(s.item()) for s in sizes]
