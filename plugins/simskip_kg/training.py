"""Train the benchmark's base KG models on the CPU, seeded, and cache their state as safetensors.

A cached model is a ``.safetensors`` file of the model's ``state_dict`` (no pickle), named after
dataset, model, seed and epochs, with a hash of the full training configuration and the PyKEEN and
torch versions in the name, so a change of any of them trains anew. The file is written to a
temporary name and renamed, so an interrupted run leaves no half-written entry; an unreadable
entry is retrained.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from pykeen.models import ERModel, model_resolver
from pykeen.training import SLCWATrainingLoop
from pykeen.version import get_version
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from simskip_core.cache import cache_key

__all__ = ["ModelSpec", "frozen_gc", "load_or_train", "train_model"]

NAMESPACE = "kg-models"


@contextlib.contextmanager
def frozen_gc() -> Iterator[None]:
    """Move existing objects out of the garbage collector's view while PyKEEN trains.

    PyKEEN's training loop calls ``gc.collect()`` after every epoch; in a process that has imported
    torch, pykeen and scikit-learn that full collection costs ~0.1-0.7 s, more than an epoch of
    Nations. ``gc.freeze()`` makes it scan only objects created since; ``gc.unfreeze()`` restores.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@dataclass(frozen=True)
class ModelSpec:
    """How a benchmark base model is trained (sLCWA, Adam, the model's default loss).

    Attributes:
        dataset: PyKEEN dataset name (``"nations"``, ``"kinships"``, ``"umls"``).
        model: PyKEEN model name (``"transe"``, ``"distmult"``, ``"complex"``, ``"rotate"``).
        epochs: training epochs.
        seed: seeds initialisation, negative sampling and batch order.
        embedding_dim: embedding dimension (complex models: complex dimension).
        lr: Adam learning rate.
        batch_size: training batch size.
        num_negs_per_pos: negatives per positive triple.
    """

    dataset: str
    model: str
    epochs: int
    seed: int = 0
    embedding_dim: int = 64
    lr: float = 0.01
    batch_size: int = 256
    num_negs_per_pos: int = 16

    def key(self) -> str:
        """Cache key: the spec, PyKEEN's and torch's versions."""
        return cache_key("kg-model", asdict(self), get_version(), torch.__version__.split("+")[0])

    def filename(self) -> str:
        """``<dataset>-<model>-s<seed>-e<epochs>-<key>.safetensors``."""
        return f"{self.dataset}-{self.model}-s{self.seed}-e{self.epochs}-{self.key()}.safetensors"


def _build(spec: ModelSpec, training: Any) -> ERModel:
    model = model_resolver.make(
        spec.model, triples_factory=training, embedding_dim=spec.embedding_dim, random_seed=spec.seed
    )
    if not isinstance(model, ERModel):  # pragma: no cover - every model name we register is an ERModel
        raise TypeError(f"{spec.model} is not an ERModel.")
    return model


def train_model(spec: ModelSpec, training: Any, *, progress: bool = False) -> tuple[ERModel, dict[str, Any]]:
    """Train ``spec`` on the training triples factory; returns the model and ``{"losses", "train_seconds"}``."""
    model = _build(spec, training)
    loop = SLCWATrainingLoop(
        model=model,
        triples_factory=training,
        optimizer="adam",
        optimizer_kwargs={"lr": spec.lr},
        negative_sampler_kwargs={"num_negs_per_pos": spec.num_negs_per_pos},
        automatic_memory_optimization=False,
    )
    tic = time.perf_counter()
    with frozen_gc(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        losses = loop.train(
            triples_factory=training,
            num_epochs=spec.epochs,
            batch_size=spec.batch_size,
            use_tqdm=progress,
            use_tqdm_batch=False,
        )
    model.eval()
    return model, {"losses": [float(x) for x in losses or []], "train_seconds": time.perf_counter() - tic}


def _save(path: Path, model: ERModel, spec: ModelSpec, info: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu().clone() for k, v in model.state_dict().items()}
    metadata = {"spec": json.dumps(asdict(spec)), "info": json.dumps(info)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".safetensors.tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load(path: Path, spec: ModelSpec, training: Any) -> tuple[ERModel, dict[str, Any]] | None:
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            info = json.loads((handle.metadata() or {}).get("info", "{}"))
        model = _build(spec, training)
        model.load_state_dict(tensors, strict=True)
    except (OSError, SafetensorError, RuntimeError, ValueError, KeyError):
        path.unlink(missing_ok=True)
        return None
    model.eval()
    info["cached"] = True
    return model, info


def load_or_train(
    spec: ModelSpec,
    training: Any,
    *,
    cache_dir: Path | str | None,
    use_cache: bool = True,
    progress: bool = False,
) -> tuple[ERModel, dict[str, Any]]:
    """The model of ``spec``: read from ``cache_dir/kg-models`` when cached there, else trained (and cached).

    ``info`` holds ``losses``, ``train_seconds`` (of the original training), ``cached`` and ``path``.
    """
    path = None if cache_dir is None else Path(cache_dir).expanduser() / NAMESPACE / spec.filename()
    if path is not None and use_cache and path.exists():
        loaded = _load(path, spec, training)
        if loaded is not None:
            loaded[1]["path"] = str(path)
            return loaded
    model, info = train_model(spec, training, progress=progress)
    info["cached"] = False
    if path is not None and use_cache:
        _save(path, model, spec, info)
        info["path"] = str(path)
    return model, info
