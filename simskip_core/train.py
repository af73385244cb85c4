"""The training loop: seeded, batched, early-stopped on a validation criterion, checkpointed and resumable."""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from simskip_core.augment import Augmentation
from simskip_core.errors import CorruptModelError
from simskip_core.losses.base import ContrastiveLoss
from simskip_core.pairs import PairSignal
from simskip_core.refiner import SkipRefiner

__all__ = ["TrainConfig", "fit_refiner"]

CHECKPOINT_NAME = "checkpoint"


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
        checkpoint_dir: write a checkpoint there after every epoch.
        resume: continue from the checkpoint in ``checkpoint_dir`` when one exists.
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

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}.")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (negatives come from the batch), got {self.batch_size}.")
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


class _Batches:
    """Draws batches of row indices; with pair signals, part of each batch are partners of the rest."""

    def __init__(self, rows: torch.Tensor, signals: Sequence[PairSignal], config: TrainConfig, n: int) -> None:
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


def _masks(index: torch.Tensor, signals: Sequence[PairSignal]) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
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


def _batch_loss(
    x: torch.Tensor,
    index: torch.Tensor,
    refiner: SkipRefiner,
    loss_fn: ContrastiveLoss,
    augmentation: Augmentation,
    signals: Sequence[PairSignal],
    generator: torch.Generator,
) -> torch.Tensor:
    batch = x[index]  # (B, d)
    view_a, view_b = augmentation(batch, generator), augmentation(batch, generator)
    h_a, h_b = refiner(view_a), refiner(view_b)  # (B, d)
    z_a, z_b = refiner.project(h_a), refiner.project(h_b)  # (B, k)
    positives, per_signal = _masks(index, signals)
    return loss_fn(z_a, z_b, positives=positives, features=(h_a, h_b), signals=per_signal)


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


def _save_checkpoint(folder: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for suffix, writer in (
        (".safetensors", lambda p: save_file({k: v.contiguous() for k, v in tensors.items()}, p)),
        (".json", lambda p: Path(p).write_text(json.dumps(meta), encoding="utf-8")),
    ):
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        os.close(fd)
        try:
            writer(tmp)
            os.replace(tmp, folder / f"{CHECKPOINT_NAME}{suffix}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _load_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    weights, meta_path = folder / f"{CHECKPOINT_NAME}.safetensors", folder / f"{CHECKPOINT_NAME}.json"
    if not weights.exists() or not meta_path.exists():
        return None
    try:
        return load_file(str(weights)), json.loads(meta_path.read_text(encoding="utf-8"))
    except Exception as error:
        raise CorruptModelError(f"the checkpoint in {folder} is unreadable ({error}); delete it to start afresh.") from error


def _prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in state.items()}


def _unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    start = len(prefix) + 1
    return {k[start:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


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

    A ``val_fraction`` share of rows is held out; after each epoch the validation criterion is the
    contrastive loss on those rows with fixed augmentations (lower is better), or ``val_score(refiner)``
    when given (higher is better). Training stops after ``patience`` epochs without improvement and the
    best weights are restored. The refiner is left in eval mode.
    """
    n = x.shape[0]
    generator = torch.Generator().manual_seed(config.seed)
    perm = torch.randperm(n, generator=generator)
    n_val = int(round(n * config.val_fraction)) if config.val_fraction else 0
    if 0 < n_val < 2:
        n_val = 0
    val_rows, train_rows = perm[:n_val].sort().values, perm[n_val:]
    if len(train_rows) < config.batch_size:
        raise ValueError(
            f"only {len(train_rows)} training rows (after holding out {n_val} for validation) but batch_size is "
            f"{config.batch_size}; pass batch_size <= {len(train_rows)} or more rows."
        )
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    augmentation.fit(xt[train_rows])
    loss_fn.setup(feature_dim=refiner.dim, signal_names=["views", *[s.name for s in signals]])
    params = [p for module in (refiner, loss_fn) for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    batches = _Batches(train_rows, signals, config, n)

    history: list[dict[str, Any]] = []
    best: float | None = None
    best_state: dict[str, Any] | None = None
    bad_epochs = 0
    start_epoch = 0
    folder = Path(config.checkpoint_dir).expanduser() if config.checkpoint_dir else None
    if folder is not None and config.resume:
        loaded = _load_checkpoint(folder)
        if loaded is not None:
            tensors, meta = loaded
            refiner.load_state_dict(_unprefixed("refiner", tensors))
            loss_fn.load_state_dict(_unprefixed("loss", tensors))
            optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
            generator.set_state(tensors["generator"])
            if any(k.startswith("best.") for k in tensors):
                best_state = {
                    "refiner": _unprefixed("best.refiner", tensors),
                    "loss": _unprefixed("best.loss", tensors),
                }
            history, best, bad_epochs, start_epoch = meta["history"], meta["best"], meta["bad_epochs"], meta["epoch"]

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
                _batch_loss(xt, val_rows[i : i + size], refiner, loss_fn, augmentation, signals, val_gen).item()
                for i in range(0, n_val - size + 1, size)
            ]
        return float(np.mean(losses))

    higher_is_better = val_score is not None
    bar = tqdm(total=config.epochs, initial=start_epoch, desc="simskip fit", unit="epoch", disable=not config.progress)
    try:
        for epoch in range(start_epoch, config.epochs):
            tic = time.perf_counter()
            refiner.train()
            loss_fn.train()
            losses = []
            for index in batches.epoch(generator):
                loss = _batch_loss(xt, index, refiner, loss_fn, augmentation, signals, generator)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            score = validation()
            record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val": score, "seconds": time.perf_counter() - tic}
            history.append(record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['train_loss']:.4f}", val=f"{score:.4f}")
            if not np.isfinite(record["train_loss"]):
                raise FloatingPointError(
                    f"training loss became {record['train_loss']} at epoch {epoch + 1}; lower lr or check the input scale."
                )
            if np.isfinite(score):
                improved = best is None or (score > best + config.min_delta if higher_is_better else score < best - config.min_delta)
                if improved:
                    best, bad_epochs = score, 0
                    best_state = {
                        "refiner": copy.deepcopy(refiner.state_dict()),
                        "loss": copy.deepcopy(loss_fn.state_dict()),
                    }
                else:
                    bad_epochs += 1
            if folder is not None:
                opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
                tensors = {
                    **_prefixed("refiner", refiner.state_dict()),
                    **_prefixed("loss", loss_fn.state_dict()),
                    **opt_tensors,
                    "generator": generator.get_state(),
                }
                if best_state is not None:
                    tensors.update(_prefixed("best.refiner", best_state["refiner"]))
                    tensors.update(_prefixed("best.loss", best_state["loss"]))
                meta = {
                    "epoch": epoch + 1,
                    "history": history,
                    "best": best,
                    "bad_epochs": bad_epochs,
                    "optimizer": opt_meta,
                    "config": asdict(config),
                }
                _save_checkpoint(folder, tensors, meta)
            if config.patience is not None and bad_epochs >= config.patience:
                break
    finally:
        bar.close()
    if best_state is not None:
        refiner.load_state_dict(best_state["refiner"])
        loss_fn.load_state_dict(best_state["loss"])
    refiner.eval()
    loss_fn.eval()
    return history
