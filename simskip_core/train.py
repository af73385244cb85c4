"""The training loop: seeded, batched, early-stopped on a validation criterion, checkpointed and resumable."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from simskip_core.augment import Augmentation, Compose, FeatureMask, GaussianNoise
from simskip_core.errors import CorruptModelError
from simskip_core.losses.base import ContrastiveLoss
from simskip_core.pairs import PairSignal
from simskip_core.progress import bar_disabled
from simskip_core.refiner import SkipRefiner

if TYPE_CHECKING:
    from simskip_core.scale import distributed as _dist

# simskip_core.scale.distributed is imported where it is used, so that importing the package does not import it
# (``python -m simskip_core.scale.distributed`` would otherwise run a module already in sys.modules).

__all__ = ["TrainConfig", "fit_refiner"]

CHECKPOINT_NAME = "checkpoint"
CHECKPOINT_FORMAT = "simskip-checkpoint"
CHECKPOINT_VERSION = 2
#: Rows hashed into a checkpoint's data fingerprint (evenly spaced, whatever the number of rows).
FINGERPRINT_ROWS = 64

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Training options.

    Attributes:
        epochs: maximum number of passes over the training rows.
        batch_size: items per batch (each contributes two views).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        seed: seed of the validation split, batch order, augmentations and pair sampling.
        val_fraction: share of rows held out for early stopping (0 turns early stopping off).
        patience: epochs without improvement of the validation criterion before stopping (None: never stop early).
        min_delta: smallest improvement that counts.
        pair_fraction: with pair signals, the share of each batch made of positive partners of the other items.
        progress: show a tqdm progress bar.
        checkpoint_dir: write a checkpoint there after every epoch: one ``checkpoint.safetensors`` file
            (weights, optimizer and random-number state, progress as JSON in its header) replaced as a
            whole, so a kill leaves the previous epoch's checkpoint or the new one.
        resume: continue from the checkpoint in ``checkpoint_dir`` when one exists. The checkpoint must come
            from the same run: data (shape and a fixed sample of rows), seed, lr, weight decay, batch size,
            validation share, pair fraction, architecture, loss, augmentations and pair signals; any
            difference is refused with a ``ValueError`` naming it. A run that stopped early trains nothing
            more and returns its history; one that reached its epochs continues only when ``epochs`` is now
            larger.
        distributed: train with DistributedDataParallel across the ranks of the initialised
            torch.distributed process group (launch with ``torchrun``, see :mod:`simskip_core.scale.distributed`).
            None (default): on exactly when a process group of more than one process is initialised.
            ``batch_size`` is then the global batch: every rank draws the same batch order and
            augmentation noise from ``seed``, computes its contiguous slice of each batch, and the
            loss sees the whole batch (negatives gathered across ranks), so the weights match a
            single-process run with the same seed. Only rank 0 shows progress and writes checkpoints.
        device: where to compute ("cpu", "cuda", "cuda:1", ...). None: this rank's GPU when CUDA is
            available, else the CPU. Batches and augmentations are drawn on the CPU (same random
            numbers on every device); the refiner is moved back to its original device at the end.
        augment_fit_rows: fit augmentation statistics (per-dimension std) on a seeded sample of this many
            training rows instead of all of them, for inputs too large to hold in memory (None: all rows).
    """

    epochs: int = 50
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-5
    seed: int = 0
    val_fraction: float = 0.1
    patience: int | None = 10
    min_delta: float = 1e-4
    pair_fraction: float = 0.5
    progress: bool = True
    checkpoint_dir: str | None = None
    resume: bool = False
    distributed: bool | None = None
    device: str | None = None
    augment_fit_rows: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}.")
        if self.batch_size < 2:
            raise ValueError(
                f"batch_size must be >= 2 (negatives come from the batch), got {self.batch_size}."
            )
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}.")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}.")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 or None, got {self.patience}.")
        if not 0.0 <= self.pair_fraction < 1.0:
            raise ValueError(f"pair_fraction must be in [0, 1), got {self.pair_fraction}.")
        if self.resume and not self.checkpoint_dir:
            raise ValueError("resume=True needs checkpoint_dir, the folder the checkpoint was written to.")
        if self.augment_fit_rows is not None and self.augment_fit_rows < 2:
            raise ValueError(
                f"augment_fit_rows must be >= 2 or None (all training rows), got {self.augment_fit_rows}."
            )
        if self.device is not None:
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError) as error:
                raise ValueError(
                    f"device {self.device!r} is not a torch device; use 'cpu', 'cuda' or 'cuda:N'."
                ) from error


class _Batches:
    """Draws batches of row indices; with pair signals, part of each batch are partners of the rest."""

    def __init__(
        self, rows: torch.Tensor, signals: Sequence[PairSignal], config: TrainConfig, n: int
    ) -> None:
        self.rows = rows
        self.signals = list(signals)
        self.batch_size = config.batch_size
        self.pair_fraction = config.pair_fraction if self.signals else 0.0
        self.allowed = torch.zeros(n, dtype=torch.bool)
        self.allowed[rows] = True

    def epoch(self, generator: torch.Generator) -> list[torch.Tensor]:
        order = self.rows[torch.randperm(len(self.rows), generator=generator)]
        n_anchor = max(1, round(self.batch_size * (1 - self.pair_fraction)))
        batches = []
        for start in range(0, len(order), n_anchor):
            anchors = order[start : start + n_anchor]
            if self.pair_fraction:
                anchors = self._with_partners(anchors, generator)
            if len(anchors) >= 2:
                batches.append(anchors)
        return batches

    def _with_partners(self, anchors: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n_partner = self.batch_size - len(anchors) if len(anchors) * 2 > self.batch_size else len(anchors)
        source = anchors[torch.randint(len(anchors), (n_partner,), generator=generator)]
        which = torch.randint(len(self.signals), (n_partner,), generator=generator)
        partners = torch.full_like(source, -1)
        for s, signal in enumerate(self.signals):
            pick = which == s
            if pick.any():
                partners[pick] = signal.sample_partners(source[pick], generator)
        ok = (partners >= 0) & self.allowed[partners.clamp(min=0)]
        fallback = self.rows[torch.randint(len(self.rows), (n_partner,), generator=generator)]
        return torch.cat([anchors, torch.where(ok, partners, fallback)])


def _masks(
    index: torch.Tensor, signals: Sequence[PairSignal]
) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """Union positive mask and per-signal masks of a batch; the same item drawn twice is always positive."""
    same = index[:, None] == index[None, :]
    same.fill_diagonal_(False)
    per_signal = {"views": torch.zeros_like(same)}
    union = same.clone()
    for signal in signals:
        mask = signal.batch_mask(index) | same
        per_signal[signal.name] = mask
        union |= mask
    return (union if union.any() else None), per_signal


class _Rows:
    """Reads rows of the input as float32 CPU tensors; memmaps and non-float32 arrays are read lazily, row by row."""

    def __init__(self, x: Any) -> None:
        self.shape = tuple(x.shape)
        self.tensor: torch.Tensor | None = None
        self.array: np.ndarray | None = None
        if isinstance(x, torch.Tensor):
            self.tensor = x.detach().to("cpu", torch.float32)
        elif isinstance(x, np.ndarray) and not isinstance(x, np.memmap) and x.dtype == np.float32:
            self.tensor = torch.from_numpy(np.ascontiguousarray(x))
        else:
            self.array = x

    def take(self, index: torch.Tensor) -> torch.Tensor:
        """Rows ``index`` (k,) as a (k, d) float32 tensor, in the order given."""
        if self.tensor is not None:
            return self.tensor[index]
        assert self.array is not None
        return torch.from_numpy(np.ascontiguousarray(self.array[index.numpy()], dtype=np.float32))


def _rowwise(augmentation: Augmentation) -> bool:
    """True when the augmentation treats rows independently and draws random numbers by shape only.

    Such augmentations can run on the global batch with other ranks' rows left as zeros: the local
    rows get exactly the values a single process would give them. Plugins declare it with a class
    attribute ``rowwise = True``; unknown augmentations are assumed not to be, and then every rank
    reads the whole global batch.
    """
    flag = getattr(augmentation, "rowwise", None)
    if flag is not None:
        return bool(flag)
    if isinstance(augmentation, Compose):
        return all(_rowwise(a) for a in augmentation.augmentations)
    return type(augmentation) in (FeatureMask, GaussianNoise)


class _Step(nn.Module):
    """One batch's loss: refiner -> projector on the local views, gather across ranks, loss on the global batch.

    Wrapping this module (not just the refiner) in DDP puts the loss's own parameters (projection
    heads, uncertainty weights) under DDP's gradient averaging too.
    """

    def __init__(self, refiner: SkipRefiner, loss_fn: ContrastiveLoss, signals: Sequence[PairSignal]) -> None:
        super().__init__()
        self.refiner = refiner
        self.loss_fn = loss_fn
        self.signals = list(signals)

    def forward(
        self,
        view_a: torch.Tensor,
        view_b: torch.Tensor,
        index: torch.Tensor,
        sizes: list[int] | None = None,
    ) -> torch.Tensor:
        from simskip_core.scale import distributed as _dist

        h_a, h_b = self.refiner(view_a), self.refiner(view_b)  # (b, d)
        z_a, z_b = self.refiner.project(h_a), self.refiner.project(h_b)  # (b, k)
        if sizes is not None:
            # The loss sees the global batch; projections and features travel separately so that a loss
            # ignoring one of them leaves that gather out of the backward graph (unused stays unused).
            z = _dist.gather_with_grad(torch.cat([z_a, z_b], dim=1), sizes)  # (B, 2k)
            h = _dist.gather_with_grad(torch.cat([h_a, h_b], dim=1), sizes)  # (B, 2d)
            z_a, z_b = z.chunk(2, dim=1)
            h_a, h_b = h.chunk(2, dim=1)
            index = _dist.gather_without_grad(index, sizes)  # (B,)
        positives, per_signal = _masks(index.cpu(), self.signals)
        device = z_a.device
        if device.type != "cpu":
            positives = None if positives is None else positives.to(device)
            per_signal = {k: v.to(device) for k, v in per_signal.items()}
        return self.loss_fn(z_a, z_b, positives=positives, features=(h_a, h_b), signals=per_signal)


def _views(
    rows: _Rows,
    index: torch.Tensor,
    lo: int,
    hi: int,
    augmentation: Augmentation,
    generator: torch.Generator,
    rowwise: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two augmented views of batch rows ``index[lo:hi]``, drawn as if the whole batch ``index`` were augmented.

    The random numbers of the whole global batch are drawn on every rank (the generator stays in step
    across ranks and with a single-process run); only rows ``lo:hi`` are read from the input when the
    augmentation is row-wise.
    """
    if lo == 0 and hi == len(index):
        batch = rows.take(index)
    elif rowwise:
        batch = torch.zeros((len(index), rows.shape[1]), dtype=torch.float32)
        batch[lo:hi] = rows.take(index[lo:hi])
    else:
        batch = rows.take(index)
    view_a, view_b = augmentation(batch, generator), augmentation(batch, generator)
    return view_a[lo:hi], view_b[lo:hi]


def _batch_loss(
    rows: _Rows,
    index: torch.Tensor,
    step: _Step | DistributedDataParallel,
    augmentation: Augmentation,
    generator: torch.Generator,
    device: torch.device,
    *,
    rank: int = 0,
    world_size: int = 1,
    rowwise: bool = True,
) -> torch.Tensor:
    """The loss of batch ``index``; with ``world_size > 1`` this rank computes its slice and the loss is global."""
    from simskip_core.scale import distributed as _dist

    sizes = _dist.split_sizes(len(index), world_size) if world_size > 1 else None
    lo = sum(sizes[:rank]) if sizes else 0
    hi = lo + sizes[rank] if sizes else len(index)
    view_a, view_b = _views(rows, index, lo, hi, augmentation, generator, rowwise)
    local = index[lo:hi]
    if device.type != "cpu":
        view_a, view_b, local = (t.to(device, non_blocking=True) for t in (view_a, view_b, local))
    return step(view_a, view_b, local, sizes)


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _fsync_path(path: Path) -> None:
    """Flush a file's or a folder's entry to disk (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - folders on Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems without fsync on folders
        pass
    finally:
        os.close(fd)


def _checkpoint_path(folder: Path) -> Path:
    return folder / f"{CHECKPOINT_NAME}.safetensors"


def _save_checkpoint(folder: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write the checkpoint as one file: tensors plus ``meta`` as JSON in the safetensors header.

    The file is written next to the old one, flushed to disk and renamed over it, so a kill at any
    point leaves either the previous checkpoint or the new one, never a mix of two epochs.
    """
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{CHECKPOINT_NAME}.", suffix=".tmp")
    os.close(fd)
    header = {"format": CHECKPOINT_FORMAT, "version": str(CHECKPOINT_VERSION), "meta": json.dumps(meta)}
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=header)
        _fsync_path(Path(tmp))
        os.replace(tmp, _checkpoint_path(folder))
        _fsync_path(folder)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _remove_stale_temporaries(folder: Path) -> None:
    """Delete half-written checkpoint files that a killed run left (only simskip's own ``.checkpoint.*.tmp``)."""
    for stale in folder.glob(f".{CHECKPOINT_NAME}.*.tmp"):
        stale.unlink(missing_ok=True)
        logger.info("removed %s, a checkpoint left half-written by an interrupted run", stale)


def _load_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The tensors and metadata of the checkpoint in ``folder``; None when there is none."""
    path = _checkpoint_path(folder)
    if not path.exists():
        if (folder / f"{CHECKPOINT_NAME}.json").exists():
            raise ValueError(_old_format_message(folder))
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
    except Exception as error:
        raise CorruptModelError(
            f"the checkpoint {path} is unreadable ({error}); delete it or pass a new checkpoint_dir "
            "(--checkpoint-dir) to start afresh."
        ) from error
    if header.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(_old_format_message(folder))
    if header.get("version") != str(CHECKPOINT_VERSION):
        raise ValueError(
            f"the checkpoint {path} has format version {header.get('version')!r}, this simskip reads "
            f"{CHECKPOINT_VERSION}; pass a new checkpoint_dir (--checkpoint-dir) or start without resume."
        )
    try:
        meta = json.loads(header["meta"])
    except (KeyError, json.JSONDecodeError) as error:
        raise CorruptModelError(
            f"the checkpoint {path} has no readable metadata ({error}); delete it or pass a new checkpoint_dir."
        ) from error
    return tensors, meta


def _old_format_message(folder: Path) -> str:
    return (
        f"{folder} holds a checkpoint of an older simskip (weights and {CHECKPOINT_NAME}.json written one after "
        "the other, which a kill can mix up), which cannot be resumed safely; pass a new checkpoint_dir "
        "(--checkpoint-dir) or start without resume."
    )


def _loss_config(loss_fn: ContrastiveLoss) -> Any:
    """The loss's settings: its ``config()`` when it has one, else its plain (non-tensor) attributes."""
    config = getattr(loss_fn, "config", None)
    if callable(config):
        return config()
    plain = (bool, int, float, str, tuple, type(None))
    return {
        key: value
        for key, value in sorted(vars(loss_fn).items())
        if not key.startswith("_") and key != "training" and isinstance(value, plain)
    }


def _data_digest(rows: _Rows) -> str:
    """sha256 of a fixed sample of rows (evenly spaced, first and last included): O(1) in the number of rows."""
    n = rows.shape[0]
    pick = np.unique(np.linspace(0, n - 1, min(n, FINGERPRINT_ROWS)).round().astype(np.int64))
    sample = rows.take(torch.from_numpy(pick)).contiguous()
    return hashlib.sha256(sample.numpy().tobytes()).hexdigest()


def _fingerprint(
    rows: _Rows,
    refiner: SkipRefiner,
    loss_fn: ContrastiveLoss,
    augmentation: Augmentation,
    signals: Sequence[PairSignal],
    config: TrainConfig,
) -> dict[str, Any]:
    """What a checkpoint must share with the run that resumes it (as JSON values)."""
    fingerprint = {
        "data shape": list(rows.shape),
        "data sample hash": _data_digest(rows),
        "seed": config.seed,
        "lr": config.lr,
        "weight_decay": config.weight_decay,
        "batch_size": config.batch_size,
        "val_fraction": config.val_fraction,
        "pair_fraction": config.pair_fraction,
        "augment_fit_rows": config.augment_fit_rows,
        "architecture": refiner.config(),
        "loss": [type(loss_fn).__name__, _loss_config(loss_fn)],
        "augmentation": [type(augmentation).__name__, augmentation.config()],
        "pair signals": [signal.name for signal in signals],
    }
    result: dict[str, Any] = json.loads(json.dumps(fingerprint, default=str))
    return result


def _check_fingerprint(path: Path, saved: Any, current: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming every field in which the checkpoint's run differs from this one."""
    if not isinstance(saved, dict):
        raise CorruptModelError(f"the checkpoint {path} has no run fingerprint; pass a new checkpoint_dir.")
    differ = [key for key in current if saved.get(key) != current[key]]
    if not differ:
        return
    shown = []
    for key in differ:
        before, now = saved.get(key), current[key]
        if isinstance(now, dict) and isinstance(before, dict):
            keys = sorted(k for k in {*now, *before} if now.get(k) != before.get(k))
            shown.append(f"{key} ({', '.join(f'{k}: {before.get(k)!r} -> {now.get(k)!r}' for k in keys)})")
        elif key == "data sample hash":
            shown.append("data (other rows)")
        else:
            shown.append(f"{key} ({before!r} -> {now!r})")
    raise ValueError(
        f"the checkpoint {path} belongs to another run (checkpoint -> now): {'; '.join(shown)}. Pass a new "
        "checkpoint_dir (--checkpoint-dir) for this run, or start without resume to overwrite it."
    )


def _prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in state.items()}


def _unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    start = len(prefix) + 1
    return {k[start:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


@dataclass
class _RunState:
    """Where a run stands after an epoch: what a checkpoint stores besides the tensors of the modules."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best: float | None = None
    best_state: dict[str, Any] | None = None
    bad_epochs: int = 0
    epoch: int = 0
    stopped: str | None = None  # "early", "epochs" (reached its epochs) or None (still running)


def _write_checkpoint(
    folder: Path,
    state: _RunState,
    fingerprint: dict[str, Any],
    refiner: SkipRefiner,
    loss_fn: ContrastiveLoss,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> None:
    """Save weights, optimizer state, random-number state and progress as one checkpoint file."""
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    tensors = {
        **_prefixed("refiner", refiner.state_dict()),
        **_prefixed("loss", loss_fn.state_dict()),
        **opt_tensors,
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
    }
    if state.best_state is not None:
        tensors.update(_prefixed("best.refiner", state.best_state["refiner"]))
        tensors.update(_prefixed("best.loss", state.best_state["loss"]))
    meta = {
        "epoch": state.epoch,
        "stopped": state.stopped,
        "history": state.history,
        "best": state.best,
        "bad_epochs": state.bad_epochs,
        "optimizer": opt_meta,
        "fingerprint": fingerprint,
    }
    _save_checkpoint(folder, tensors, meta)


def _restore(
    folder: Path,
    fingerprint: dict[str, Any],
    refiner: SkipRefiner,
    loss_fn: ContrastiveLoss,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> _RunState:
    """Load the checkpoint in ``folder`` into the modules after checking it belongs to this run."""
    loaded = _load_checkpoint(folder)
    if loaded is None:
        logger.info("no checkpoint in %s yet; starting from the first epoch", folder)
        return _RunState()
    tensors, meta = loaded
    path = _checkpoint_path(folder)
    _check_fingerprint(path, meta.get("fingerprint"), fingerprint)
    try:
        refiner.load_state_dict(_unprefixed("refiner", tensors))
        loss_fn.load_state_dict(_unprefixed("loss", tensors))
        optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
        generator.set_state(tensors["generator"])
        torch.set_rng_state(tensors["torch_rng"])
        best_state = None
        if any(k.startswith("best.") for k in tensors):
            best_state = {
                "refiner": _unprefixed("best.refiner", tensors),
                "loss": _unprefixed("best.loss", tensors),
            }
        return _RunState(
            meta["history"], meta["best"], best_state, meta["bad_epochs"], meta["epoch"], meta["stopped"]
        )
    except (KeyError, RuntimeError, ValueError) as error:
        raise CorruptModelError(
            f"the checkpoint {path} does not fit this run's model ({str(error).splitlines()[0]}); pass a new "
            "checkpoint_dir (--checkpoint-dir) or start without resume."
        ) from error


def _resolve_distributed(config: TrainConfig) -> _dist.DistInfo:
    from simskip_core.scale import distributed as _dist

    if config.distributed is False:
        return _dist.DistInfo()
    if config.distributed and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise RuntimeError(
            "TrainConfig(distributed=True) needs an initialised torch.distributed process group: launch the script "
            "with torchrun and call simskip_core.scale.distributed.init_distributed() before fitting."
        )
    info = _dist.dist_info()
    return info if info.world_size > 1 else _dist.DistInfo()


def _home_device(*modules: nn.Module) -> torch.device:
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            return tensor.device
    return torch.device("cpu")


def fit_refiner(
    x: np.ndarray,
    refiner: SkipRefiner,
    loss_fn: ContrastiveLoss,
    augmentation: Augmentation,
    signals: Sequence[PairSignal],
    config: TrainConfig,
    *,
    val_score: Callable[[SkipRefiner], float] | None = None,
) -> list[dict[str, Any]]:
    """Train ``refiner`` (and the loss's own parameters) on the rows of ``x``; return the history.

    ``x`` may be a numpy array, an ``np.memmap`` (rows are read batch by batch) or a torch tensor.
    A ``val_fraction`` share of rows is held out; after each epoch the validation criterion is the
    contrastive loss on those rows with fixed augmentations (lower is better), or ``val_score(refiner)``
    when given (higher is better). Training stops after ``patience`` epochs without improvement and the
    best weights are restored. The refiner is left in eval mode.

    Under ``torchrun`` (see ``TrainConfig.distributed``) every rank calls this with the same arguments;
    the ranks share each global batch, validation runs on rank 0 (``val_score`` too) and its result is
    broadcast, and only rank 0 writes checkpoints. Every rank returns the same weights and history.
    """
    from simskip_core.scale import distributed as _dist

    info = _resolve_distributed(config)
    world, rank = info.world_size, info.rank
    device = _dist.resolve_device(config.device, info)
    n = x.shape[0]
    generator = torch.Generator().manual_seed(config.seed)
    perm = torch.randperm(n, generator=generator)
    n_val = round(n * config.val_fraction) if config.val_fraction else 0
    if 0 < n_val < 2:
        n_val = 0
    val_rows, train_rows = perm[:n_val].sort().values, perm[n_val:]
    if len(train_rows) < config.batch_size:
        raise ValueError(
            f"only {len(train_rows)} training rows (after holding out {n_val} for validation) but batch_size is "
            f"{config.batch_size}; pass batch_size <= {len(train_rows)} or more rows."
        )
    if config.batch_size < world:
        raise ValueError(
            f"batch_size {config.batch_size} is smaller than the {world} ranks; every rank needs rows of each "
            f"batch, so pass batch_size >= {world} (it is the global batch, split across ranks)."
        )
    rows = _Rows(x)
    fit_rows = train_rows
    if config.augment_fit_rows is not None and config.augment_fit_rows < len(train_rows):
        sampler = torch.Generator().manual_seed(config.seed + 2)
        pick = torch.randperm(len(train_rows), generator=sampler)[: config.augment_fit_rows]
        fit_rows = train_rows[pick].sort().values
    augmentation.fit(rows.take(fit_rows))
    rowwise = _rowwise(augmentation)
    loss_fn.setup(feature_dim=refiner.dim, signal_names=["views", *[s.name for s in signals]])
    home = _home_device(refiner, loss_fn)
    refiner.to(device)
    loss_fn.to(device)
    params = [p for module in (refiner, loss_fn) for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    batches = _Batches(train_rows, signals, config, n)
    step = _Step(refiner, loss_fn, signals)
    engine: _Step | DistributedDataParallel = step
    if world > 1:
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in refiner.modules()):
            warnings.warn(
                "norm='batch' under distributed training normalises with each rank's slice of the batch, so "
                "results differ from a single-process run; use norm='layer' for rank-independent results.",
                stacklevel=2,
            )
        has_loss_params = any(p.requires_grad for p in loss_fn.parameters())
        engine = DistributedDataParallel(
            step,
            device_ids=[device.index or 0] if device.type == "cuda" else None,
            find_unused_parameters=has_loss_params,
        )

    folder = Path(config.checkpoint_dir).expanduser() if config.checkpoint_dir else None
    fingerprint = (
        _fingerprint(rows, refiner, loss_fn, augmentation, signals, config) if folder is not None else {}
    )
    state = _RunState()
    if folder is not None and info.is_main:
        _remove_stale_temporaries(folder)
    if folder is not None and config.resume:
        state = _restore(folder, fingerprint, refiner, loss_fn, optimizer, generator)
        if state.stopped == "early":
            logger.info("the run in %s had stopped early; nothing to train, returning its history", folder)
        elif state.epoch < config.epochs and state.epoch:
            logger.info("resuming the run in %s after epoch %d", folder, state.epoch)
    history, best, best_state, bad_epochs = state.history, state.best, state.best_state, state.bad_epochs
    start_epoch = config.epochs if state.stopped == "early" else state.epoch

    def validation() -> float:
        if val_score is not None:
            refiner.eval()
            with torch.no_grad():
                return float(val_score(refiner))
        if n_val == 0:
            return float("nan")
        refiner.eval()
        val_gen = torch.Generator().manual_seed(config.seed + 1)
        with torch.no_grad():
            size = min(config.batch_size, n_val)
            losses = [
                _batch_loss(rows, val_rows[i : i + size], step, augmentation, val_gen, device).item()
                for i in range(0, n_val - size + 1, size)
            ]
        return float(np.mean(losses))

    higher_is_better = val_score is not None
    bar = tqdm(
        total=config.epochs,
        initial=start_epoch,
        desc="simskip fit" if world == 1 else f"simskip fit ({world} ranks)",
        unit="epoch",
        disable=bar_disabled(config.progress and info.is_main),
    )
    try:
        for epoch in range(start_epoch, config.epochs):
            tic = time.perf_counter()
            refiner.train()
            loss_fn.train()
            losses = []
            for index in batches.epoch(generator):
                loss = _batch_loss(
                    rows,
                    index,
                    engine,
                    augmentation,
                    generator,
                    device,
                    rank=rank,
                    world_size=world,
                    rowwise=rowwise,
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            score = validation() if info.is_main else float("nan")
            if world > 1:
                score = _dist.broadcast_float(score, device=device if device.type == "cuda" else None)
            record = {
                "epoch": epoch + 1,
                "train_loss": float(np.mean(losses)),
                "val": score,
                "seconds": time.perf_counter() - tic,
            }
            record.update(loss_fn.summary())
            history.append(record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['train_loss']:.4f}", val=f"{score:.4f}")
            if not np.isfinite(record["train_loss"]):
                raise FloatingPointError(
                    f"training loss became {record['train_loss']} at epoch {epoch + 1}; lower lr or check the input scale."
                )
            if np.isfinite(score):
                improved = best is None or (
                    score > best + config.min_delta if higher_is_better else score < best - config.min_delta
                )
                if improved:
                    best, bad_epochs = score, 0
                    best_state = {
                        "refiner": copy.deepcopy(refiner.state_dict()),
                        "loss": copy.deepcopy(loss_fn.state_dict()),
                    }
                else:
                    bad_epochs += 1
            stop_early = config.patience is not None and bad_epochs >= config.patience
            if folder is not None and info.is_main:
                stopped = "early" if stop_early else ("epochs" if epoch + 1 == config.epochs else None)
                done = _RunState(history, best, best_state, bad_epochs, epoch + 1, stopped)
                _write_checkpoint(folder, done, fingerprint, refiner, loss_fn, optimizer, generator)
            if stop_early:
                break
    finally:
        bar.close()
        del engine
    if best_state is not None:
        refiner.load_state_dict(best_state["refiner"])
        loss_fn.load_state_dict(best_state["loss"])
    refiner.to(home)
    loss_fn.to(home)
    refiner.eval()
    loss_fn.eval()
    return history
