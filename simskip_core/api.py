"""The scikit-learn style facade: ``SimSkip(**config).fit(X).transform(X)``, ``save`` and ``load``."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from simskip_core import __version__
from simskip_core.apply import apply_module
from simskip_core.augment import build_augmentation
from simskip_core.baselines import AffineMap, baseline_resolver
from simskip_core.errors import CorruptModelError
from simskip_core.losses import ContrastiveLoss, loss_resolver
from simskip_core.pairs import build_signals
from simskip_core.refiner import SkipRefiner
from simskip_core.selection import LabelProbe, Probe, select_candidate
from simskip_core.serialization import read_model_dir, write_model_dir
from simskip_core.train import TrainConfig, fit_refiner
from simskip_core.validation import as_matrix, check_dim

__all__ = ["DEFAULT_AUGMENT", "SimSkip"]

#: The paper's default views: random feature masking followed by Gaussian noise.
DEFAULT_AUGMENT: tuple[tuple[str, dict[str, Any]], ...] = (
    ("mask", {"keep_prob": 0.8}),
    ("noise", {"scale": 0.5}),
)
MODES = ("refine", "auto")
FORMAT = "simskip-model"
FORMAT_VERSION = 1


class SimSkip:
    """Fit a SimSkip refiner f(x) = x + g(x) on frozen embeddings and apply it.

    By default training is label-free: two augmented views of each embedding, NT-Xent loss
    (arXiv 2404.08701). Extra positive pairs can come from mutual k-NN (``mutual_knn=k``, label-free),
    external pairs (``fit(X, pairs={"edges": E})``) or labels of a few rows (``fit(X, labels=y)``,
    few-label mode; then :attr:`uses_labels` is True).

    ``mode="auto"`` adds the no-harm guard: after training, the identity, the label-free baselines,
    the refiner and blends alpha * f(x) + (1 - alpha) * x are scored by a probe on repeated validation
    splits, and the identity is kept unless a candidate beats it beyond the validation noise. The
    report is in :attr:`selection_` and saved with the model.

    Args:
        loss: loss name ("ntxent", "studentt", "spectral", "difficulty", "mscon"), class or instance.
        loss_kwargs: keyword arguments of the loss.
        augment: augmentations: names, classes, instances or (name, kwargs) pairs, applied in order.
        hidden_dim, depth, activation, dropout, norm, normalize_output, projector_dim, projector_depth:
            the refiner's architecture (see :class:`~simskip_core.refiner.SkipRefiner`).
        epochs, batch_size, lr, weight_decay, val_fraction, patience, pair_fraction, checkpoint_dir, resume:
            training options (see :class:`~simskip_core.train.TrainConfig`).
        seed: seeds weight initialisation and everything random in training (same seed, same weights).
        mutual_knn: k of the label-free mutual k-nearest-neighbour positives (None: off).
        mode: "refine" (always apply the trained refiner) or "auto" (the no-harm guard).
        probe: auto mode's probe, ``probe(Z, split_seed) -> score``; default: a k-NN probe on ``labels``.
        alphas: blend weights auto mode tries besides alpha = 1.
        candidates: the label-free baselines auto mode compares (identity is always included).
        n_splits: validation splits auto mode scores each candidate on.
        progress: show progress bars.
    """

    def __init__(
        self,
        *,
        loss: str | type[ContrastiveLoss] | ContrastiveLoss = "ntxent",
        loss_kwargs: Mapping[str, Any] | None = None,
        augment: Any = DEFAULT_AUGMENT,
        hidden_dim: int | None = None,
        depth: int = 2,
        activation: str = "relu",
        dropout: float = 0.0,
        norm: str = "none",
        normalize_output: bool = False,
        projector_dim: int = 128,
        projector_depth: int = 2,
        epochs: int = 50,
        batch_size: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        seed: int = 0,
        val_fraction: float = 0.1,
        patience: int | None = 10,
        pair_fraction: float = 0.5,
        mutual_knn: int | None = None,
        mode: str = "refine",
        probe: Probe | None = None,
        alphas: Sequence[float] = (0.25, 0.5, 0.75),
        candidates: Sequence[str] = ("centerl2", "whitening", "allbutthetop"),
        n_splits: int = 5,
        checkpoint_dir: str | None = None,
        resume: bool = False,
        progress: bool = True,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
        if any(not 0.0 < a < 1.0 for a in alphas):
            raise ValueError(f"alphas must lie in (0, 1), got {list(alphas)}.")
        if mutual_knn is not None and mutual_knn < 1:
            raise ValueError(f"mutual_knn must be a positive k or None, got {mutual_knn}.")
        for name in candidates:
            baseline_resolver.lookup(name)
        self.loss = loss
        self.loss_kwargs = dict(loss_kwargs or {})
        self.augment = augment
        self.architecture: dict[str, Any] = {
            "hidden_dim": hidden_dim,
            "depth": depth,
            "activation": activation,
            "dropout": dropout,
            "norm": norm,
            "normalize_output": normalize_output,
            "projector_dim": projector_dim,
            "projector_depth": projector_depth,
        }
        self.train_config = TrainConfig(
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            seed=seed,
            val_fraction=val_fraction,
            patience=patience,
            pair_fraction=pair_fraction,
            progress=progress,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
        )
        self.seed = seed
        self.mutual_knn = mutual_knn
        self.mode = mode
        self.probe = probe
        self.alphas = tuple(float(a) for a in alphas)
        self.candidates = tuple(candidates)
        self.n_splits = n_splits
        self.progress = progress
        self.module_: nn.Module | None = None
        self.refiner_: SkipRefiner | None = None
        self.dim_: int | None = None
        self.history_: list[dict[str, Any]] = []
        self.loss_state_: dict[str, float] = {}
        self.selection_: dict[str, Any] | None = None
        self.uses_labels = False
        self.signals_: list[str] = []
        self.fit_seconds_: float | None = None

    # ------------------------------------------------------------------ configuration
    def get_params(self) -> dict[str, Any]:
        """The constructor arguments as a JSON-serialisable dict (the probe is not saved)."""
        loss = self.loss
        loss_name = (
            loss_resolver.normalize_inst(loss)
            if isinstance(loss, ContrastiveLoss)
            else loss_resolver.normalize_cls(loss)
            if isinstance(loss, type)
            else loss_resolver.normalize(loss)
        )
        augment = build_augmentation(self.augment).config()["augmentations"]
        cfg = self.train_config
        return {
            "loss": loss_name,
            "loss_kwargs": self.loss_kwargs,
            "augment": augment,
            **self.architecture,
            "epochs": cfg.epochs,
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "weight_decay": cfg.weight_decay,
            "seed": self.seed,
            "val_fraction": cfg.val_fraction,
            "patience": cfg.patience,
            "pair_fraction": cfg.pair_fraction,
            "mutual_knn": self.mutual_knn,
            "mode": self.mode,
            "alphas": list(self.alphas),
            "candidates": list(self.candidates),
            "n_splits": self.n_splits,
            "progress": self.progress,
        }

    def __repr__(self) -> str:
        params = self.get_params()
        shown = ", ".join(f"{k}={params[k]!r}" for k in ("loss", "mode", "epochs", "seed"))
        return f"SimSkip({shown}, ...)"

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        X: Any,
        *,
        pairs: Mapping[str, np.ndarray] | None = None,
        labels: np.ndarray | None = None,
        probe: Probe | None = None,
        val_score: Callable[[SkipRefiner], float] | None = None,
    ) -> SimSkip:
        """Train the refiner on embeddings ``X`` (n, d): numpy array, np.memmap or torch tensor.

        Args:
            pairs: external positive pairs by name, each (m, 2) row indices into ``X``.
            labels: (n,) class labels with -1 for unlabelled rows (few-label mode, label-using).
            probe: auto mode's probe (overrides the constructor's).
            val_score: early-stopping criterion ``val_score(refiner) -> float`` (higher is better);
                default: the contrastive loss on held-out rows.
        """
        tic = time.perf_counter()
        if self.mode == "auto" and probe is None and self.probe is None and labels is None:
            raise ValueError(
                "auto mode needs a probe to compare candidates: pass probe=callable(Z, split_seed) -> score, "
                "or labels= for the default k-NN probe (or use the domain plugin's default probe)."
            )
        x = as_matrix(X)
        n, d = x.shape
        signals = build_signals(n, x=x, mutual_knn=self.mutual_knn, pairs=pairs, labels=labels)
        loss_fn = loss_resolver.make(self.loss, self.loss_kwargs or None)
        if getattr(loss_fn, "requires_signals", False) and not signals:
            raise ValueError(
                f"loss {type(loss_fn).__name__} weights several positive-pair signals but none was given; "
                "pass pairs=..., labels=... or mutual_knn=k."
            )
        torch.manual_seed(self.seed)
        refiner = SkipRefiner(d, **self.architecture)
        self.history_ = fit_refiner(
            x,
            refiner,
            loss_fn,
            build_augmentation(self.augment),
            signals,
            self.train_config,
            val_score=val_score,
        )
        self.loss_state_ = loss_fn.summary()
        self.refiner_ = refiner
        self.dim_ = d
        self.signals_ = [s.name for s in signals]
        self.uses_labels = labels is not None
        self.module_ = refiner
        self.selection_ = None
        if self.mode == "auto":
            self._select(x, probe or self.probe, labels)
        self.fit_seconds_ = time.perf_counter() - tic
        return self

    def _select(self, x: np.ndarray, probe: Probe | None, labels: np.ndarray | None) -> None:
        if probe is None:
            assert labels is not None  # checked at the start of fit()
            probe = LabelProbe(labels)
            self.uses_labels = True
        assert self.refiner_ is not None
        modules: dict[str, nn.Module] = {"identity": nn.Identity()}
        for name in self.candidates:
            modules[name] = baseline_resolver.make(name).fit(x).module()
        modules["simskip"] = self.refiner_
        for alpha in self.alphas:
            blend = copy.deepcopy(self.refiner_)
            blend.residual_scale = alpha
            modules[f"simskip@{alpha:g}"] = blend
        vectors = {name: apply_module(module, x) for name, module in modules.items()}
        report = select_candidate(vectors, probe, n_splits=self.n_splits)
        report["probe"] = repr(probe)
        self.selection_ = report
        self.module_ = modules[report["chosen"]]

    def fit_transform(self, X: Any, **fit_kwargs: Any) -> np.ndarray:
        """``fit(X, **fit_kwargs).transform(X)``."""
        return self.fit(X, **fit_kwargs).transform(X)

    # ------------------------------------------------------------------ applying
    def _check_fitted(self) -> nn.Module:
        if self.module_ is None or self.dim_ is None:
            raise RuntimeError(
                "this SimSkip model is not fitted yet; call fit(X) first or SimSkip.load(path)."
            )
        return self.module_

    def transform(self, X: Any) -> np.ndarray:
        """Apply the fitted map to embeddings (m, d); returns float32 (m, d')."""
        module = self._check_fitted()
        assert self.dim_ is not None
        x = as_matrix(X)
        check_dim(x, self.dim_, what="the fitted SimSkip model")
        return apply_module(module, x)

    def mean_shift(self, X: Any) -> float:
        """Mean L2 distance the fitted map moves the rows of ``X`` (for the random-residual control)."""
        x = as_matrix(X)
        out = self.transform(x)
        if out.shape != x.shape:
            raise ValueError(
                "mean_shift needs a map that keeps the dimension; the selected candidate changes it."
            )
        return float(np.linalg.norm(out - x, axis=1).mean())

    @property
    def chosen(self) -> str:
        """Which map :meth:`transform` applies: "simskip", a blend, a baseline name or "identity"."""
        self._check_fitted()
        return "simskip" if self.selection_ is None else str(self.selection_["chosen"])

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the model to folder ``path`` (config.json + model.safetensors), atomically."""
        module = self._check_fitted()
        assert self.refiner_ is not None
        kind, module_config = _describe_module(module)
        config = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "simskip_version": __version__,
            "dim": self.dim_,
            "params": self.get_params(),
            "module": {"kind": kind, "config": module_config},
            "refiner": self.refiner_.config(),
            "history": self.history_,
            "loss_state": self.loss_state_,
            "selection": self.selection_,
            "uses_labels": self.uses_labels,
            "signals": self.signals_,
        }
        tensors = {f"refiner.{k}": v for k, v in self.refiner_.state_dict().items()}
        if module is not self.refiner_:
            tensors.update({f"module.{k}": v for k, v in module.state_dict().items()})
        return write_model_dir(path, config, tensors, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path) -> SimSkip:
        """Load a model saved with :meth:`save`; incomplete or corrupt folders raise :class:`CorruptModelError`."""
        config, tensors = read_model_dir(path)
        if config.get("format") != FORMAT:
            raise CorruptModelError(
                f"{path} does not hold a simskip model (config.json has format {config.get('format')!r})."
            )
        if config.get("format_version", 0) > FORMAT_VERSION:
            raise CorruptModelError(
                f"{path} was saved by a newer simskip (format {config['format_version']}); upgrade simskip to load it."
            )
        try:
            params = dict(config["params"])
            params["augment"] = [tuple(item) for item in params["augment"]]
            model = cls(**params)
            refiner = SkipRefiner(**config["refiner"])
            refiner.load_state_dict(
                {k[len("refiner.") :]: v for k, v in tensors.items() if k.startswith("refiner.")}
            )
            refiner.eval()
            kind = config["module"]["kind"]
            module_tensors = {k[len("module.") :]: v for k, v in tensors.items() if k.startswith("module.")}
            module = _build_module(kind, config["module"]["config"], module_tensors, refiner)
        except (KeyError, TypeError, RuntimeError, ValueError) as error:
            raise CorruptModelError(
                f"{path} holds an inconsistent simskip model ({error}); save it again."
            ) from error
        model.refiner_ = refiner
        model.module_ = module
        model.dim_ = int(config["dim"])
        model.history_ = config.get("history", [])
        model.loss_state_ = dict(config.get("loss_state", {}))
        model.selection_ = config.get("selection")
        model.uses_labels = bool(config.get("uses_labels", False))
        model.signals_ = list(config.get("signals", []))
        return model


def _describe_module(module: nn.Module) -> tuple[str, dict[str, Any]]:
    if isinstance(module, SkipRefiner):
        return "refiner", module.config()
    if isinstance(module, AffineMap):
        return "affine", {"normalize": module.normalize, "has_weight": module.weight is not None}
    if isinstance(module, nn.Identity):
        return "identity", {}
    raise TypeError(f"cannot save a module of type {type(module).__name__}.")


def _build_module(
    kind: str, config: dict[str, Any], tensors: dict[str, torch.Tensor], refiner: SkipRefiner
) -> nn.Module:
    if kind == "refiner":
        if not tensors:
            refiner.residual_scale = config.get("residual_scale", 1.0)
            return refiner
        module = SkipRefiner(**config)
        module.load_state_dict(tensors)
        return module.eval()
    if kind == "affine":
        weight = tensors.get("weight") if config["has_weight"] else None
        return AffineMap(tensors["mean"], weight, normalize=config["normalize"]).eval()
    if kind == "identity":
        return nn.Identity()
    raise ValueError(f"unknown module kind {kind!r}")
