"""The scikit-learn estimator: ``SimSkip(**params).fit(X).transform(X)``, ``save`` and ``load``."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from torch import nn

from simskip_core import __version__
from simskip_core.apply import apply_module
from simskip_core.augment import build_augmentation
from simskip_core.baselines import AffineMap, baseline_resolver
from simskip_core.errors import CorruptModelError
from simskip_core.losses import ContrastiveLoss, loss_resolver
from simskip_core.pairs import build_signals
from simskip_core.refiner import SkipRefiner
from simskip_core.selection import LabelProbe, Probe, probe_rows, select_candidate
from simskip_core.serialization import CONFIG_NAME, read_model_dir, write_model_dir
from simskip_core.train import TrainConfig, fit_refiner
from simskip_core.validation import as_matrix, check_dim, check_matrix

__all__ = ["DEFAULT_AUGMENT", "NO_PROBE_MESSAGE", "RowNormalized", "SimSkip"]

logger = logging.getLogger(__name__)

#: The paper's default views: random feature masking followed by Gaussian noise.
DEFAULT_AUGMENT: tuple[tuple[str, dict[str, Any]], ...] = (
    ("mask", {"keep_prob": 0.8}),
    ("noise", {"scale": 0.5}),
)
MODES = ("refine", "auto")
FORMAT = "simskip-model"
FORMAT_VERSION = 1
ARCHITECTURE_PARAMS = (
    "hidden_dim",
    "depth",
    "activation",
    "dropout",
    "norm",
    "normalize_output",
    "projector_dim",
    "projector_depth",
)
#: Parameters not written to config.json: the probe is code, the others belong to the machine or the run.
_UNSAVED_PARAMS = ("probe", "checkpoint_dir", "resume", "device", "distributed")
_OPTIONAL, _INT, _REAL = type(None), (Integral,), (Real,)
#: JSON type of each saved parameter; the first group is in every saved folder, the second only in newer ones.
_SAVED_PARAM_TYPES: dict[str, tuple[type, ...]] = {
    "loss": (str,),
    "loss_kwargs": (dict,),
    "augment": (list,),
    "hidden_dim": (*_INT, _OPTIONAL),
    "depth": _INT,
    "activation": (str,),
    "dropout": _REAL,
    "norm": (str,),
    "normalize_output": (bool,),
    "projector_dim": _INT,
    "projector_depth": _INT,
    "epochs": _INT,
    "batch_size": _INT,
    "lr": _REAL,
    "weight_decay": _REAL,
    "seed": _INT,
    "val_fraction": _REAL,
    "patience": (*_INT, _OPTIONAL),
    "pair_fraction": _REAL,
    "mutual_knn": (*_INT, _OPTIONAL),
    "mode": (str,),
    "alphas": (list,),
    "candidates": (list,),
    "n_splits": _INT,
    "progress": (bool,),
}
_NEWER_PARAM_TYPES: dict[str, tuple[type, ...]] = {
    "min_delta": _REAL,
    "augment_fit_rows": (*_INT, _OPTIONAL),
}
_BOOL_PARAMS = frozenset({"normalize_output", "progress"})
#: Rows auto mode fits its baseline candidates on at most (a seeded sample beyond that).
BASELINE_FIT_ROWS = 20_000
#: Why auto mode refuses to run without labels or a probe, and what to pass instead (one line).
NO_PROBE_MESSAGE = (
    "auto mode needs a probe to compare candidates and there is none: label-free criteria measured on "
    "the suite pick candidates significantly worse than the identity (docs/label-free-selection.md); "
    "pass labels= (a few labelled rows), probe=callable(Z, split_seed) -> score, or the domain's probe "
    "(graph: simskip_graph.LinkPredictionProbe / GraphAutoSimSkip, KG: simskip_kg.ValidationMRRProbe)."
)


class RowNormalized(nn.Module):
    """``F.normalize(inner(x))``: a candidate map followed by L2 row normalisation.

    Auto mode wraps every candidate in it when the probe scores normalised rows (its
    ``row_normalize`` attribute, e.g. the KG probe of a model whose entities are unit vectors), so
    :meth:`SimSkip.transform` returns exactly the vectors the probe scored.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The inner map's rows, L2-normalised."""
        return torch.nn.functional.normalize(self.inner(x), dim=-1)


class SimSkip(TransformerMixin, BaseEstimator):
    """Fit a SimSkip refiner f(x) = x + g(x) on frozen embeddings and apply it; a scikit-learn transformer.

    By default training is label-free: two augmented views of each embedding, NT-Xent loss
    (arXiv 2404.08701). Extra positive pairs can come from mutual k-NN (``mutual_knn=k``, label-free),
    external pairs (``fit(X, pairs={"edges": E})``) or labels of a few rows (``fit(X, labels=y)``,
    few-label mode; then :attr:`uses_labels` is True).

    ``mode="auto"`` adds the no-harm guard: after training, the identity, the label-free baselines,
    the refiner, blends alpha * f(x) + (1 - alpha) * x and any ``fit(candidates=...)`` maps are scored
    by a probe on repeated validation splits, and the identity is kept unless a candidate beats it
    beyond the validation noise. Each candidate is applied once, to the rows the probe reads (a
    bounded sample for :class:`~simskip_core.selection.LabelProbe`). With ``labels=`` and no probe,
    the labels serve only the probe: the refiner is trained label-free, so no labelled row that
    scores a candidate trained it. The report is in :attr:`selection_` and saved with the model.

    Every constructor argument is stored unchanged under its own name (``get_params``, ``set_params``,
    ``sklearn.base.clone``, ``Pipeline`` and ``cross_val_score`` work) and checked again by :meth:`fit`.

    Args:
        loss: loss name ("ntxent", "studentt", "spectral", "difficulty", "mscon"), class or instance.
        loss_kwargs: keyword arguments of the loss.
        augment: augmentations: names, classes, instances or (name, kwargs) pairs, applied in order.
        hidden_dim, depth, activation, dropout, norm, normalize_output, projector_dim, projector_depth:
            the refiner's architecture (see :class:`~simskip_core.refiner.SkipRefiner`).
        epochs, batch_size, lr, weight_decay, val_fraction, patience, min_delta, pair_fraction,
        checkpoint_dir, resume, device, augment_fit_rows, distributed:
            training options (see :class:`~simskip_core.train.TrainConfig`). A ``batch_size`` larger
            than the training rows is capped to them (noted in :attr:`fit_notes_` and the history).
        seed: seeds weight initialisation and everything random in training (same seed, same weights).
        mutual_knn: k of the label-free mutual k-nearest-neighbour positives (None: off).
        mode: "refine" (always apply the trained refiner) or "auto" (the no-harm guard).
        probe: auto mode's probe, ``probe(Z, split_seed) -> score``; default: a k-NN probe on ``labels``.
        alphas: blend weights auto mode tries besides alpha = 1.
        candidates: the label-free baselines auto mode compares (identity is always included).
        n_splits: validation splits auto mode scores each candidate on.
        progress: show progress bars.

    Attributes (after :meth:`fit` or :meth:`load`):
        module_: the map :meth:`transform` applies; refiner_: the trained refiner; dim_: the input dimension;
        history_: one record per epoch; loss_state_: the loss's learned state; selection_: auto mode's
        report (None otherwise); signals_: names of the pair signals; fit_notes_: adjustments made to the
        parameters for this data (e.g. a capped batch size); fit_seconds_; uses_labels.
    """

    module_: nn.Module | None = None
    refiner_: SkipRefiner | None = None
    dim_: int | None = None
    selection_: dict[str, Any] | None = None
    fit_seconds_: float | None = None
    uses_labels: bool = False
    history_: list[dict[str, Any]]
    loss_state_: dict[str, float]
    signals_: list[str]
    fit_notes_: list[str]

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
        min_delta: float = 1e-4,
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
        device: str | None = None,
        augment_fit_rows: int | None = None,
        distributed: bool | None = None,
    ) -> None:
        self.loss = loss
        self.loss_kwargs = loss_kwargs
        self.augment = augment
        self.hidden_dim = hidden_dim
        self.depth = depth
        self.activation = activation
        self.dropout = dropout
        self.norm = norm
        self.normalize_output = normalize_output
        self.projector_dim = projector_dim
        self.projector_depth = projector_depth
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.seed = seed
        self.val_fraction = val_fraction
        self.patience = patience
        self.min_delta = min_delta
        self.pair_fraction = pair_fraction
        self.mutual_knn = mutual_knn
        self.mode = mode
        self.probe = probe
        self.alphas = alphas
        self.candidates = candidates
        self.n_splits = n_splits
        self.checkpoint_dir = checkpoint_dir
        self.resume = resume
        self.progress = progress
        self.device = device
        self.augment_fit_rows = augment_fit_rows
        self.distributed = distributed
        self._check_params()

    # ------------------------------------------------------------------ configuration
    def _check_params(self) -> TrainConfig:
        """Raise ``ValueError`` for a bad parameter (nothing is modified); return the training options."""
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}.")
        if any(not 0.0 < a < 1.0 for a in self.alphas):
            raise ValueError(f"alphas must lie in (0, 1), got {list(self.alphas)}.")
        if self.mutual_knn is not None and not _is_positive_int(self.mutual_knn):
            raise ValueError(f"mutual_knn must be a positive k or None, got {self.mutual_knn!r}.")
        if self.hidden_dim is not None and not _is_positive_int(self.hidden_dim):
            raise ValueError(
                f"hidden_dim must be a positive int or None (None: the embedding dimension), got {self.hidden_dim!r}."
            )
        if not _is_positive_int(self.n_splits):
            raise ValueError(f"n_splits must be a positive int, got {self.n_splits!r}.")
        for name in self.candidates:
            baseline_resolver.lookup(name)
        return self.train_config

    @property
    def train_config(self) -> TrainConfig:
        """The training options as a :class:`~simskip_core.train.TrainConfig` (built from the parameters).

        Assigning one (``model.train_config = dataclasses.replace(model.train_config, device="cuda")``)
        writes its fields back to the parameters of the same names.
        """
        params = self.get_params(deep=False)
        return TrainConfig(
            **{f.name: params[f.name] for f in dataclasses.fields(TrainConfig) if f.name in params}
        )

    @train_config.setter
    def train_config(self, config: TrainConfig) -> None:
        params, default = self.get_params(deep=False), TrainConfig()
        updates = {}
        for field in dataclasses.fields(TrainConfig):
            value = getattr(config, field.name)
            if field.name in params:
                updates[field.name] = value
            elif value != getattr(default, field.name):
                raise ValueError(
                    f"SimSkip has no parameter for TrainConfig.{field.name}; it cannot be set through train_config."
                )
        self.set_params(**updates)

    @property
    def architecture(self) -> dict[str, Any]:
        """The refiner's architecture parameters (``SkipRefiner(dim, **architecture)``)."""
        return {name: getattr(self, name) for name in ARCHITECTURE_PARAMS}

    def config_dict(self) -> dict[str, Any]:
        """The parameters as a JSON-serialisable dict, as saved in config.json's ``"params"``.

        The loss and augmentations are written by name; the probe, checkpoint settings, device and
        distributed flag are not saved.
        """
        params = self.get_params(deep=False)
        for name in _UNSAVED_PARAMS:
            del params[name]
        params["loss"] = _loss_name(self.loss)
        params["loss_kwargs"] = dict(self.loss_kwargs or {})
        params["augment"] = build_augmentation(self.augment).config()["augmentations"]
        params["alphas"] = [float(a) for a in self.alphas]
        params["candidates"] = list(self.candidates)
        return params

    def __repr__(self, N_CHAR_MAX: int = 700) -> str:
        """Short: the loss, mode, epochs and seed."""
        loss = self.loss if isinstance(self.loss, str) else _loss_label(self.loss)
        return f"SimSkip(loss={loss!r}, mode={self.mode!r}, epochs={self.epochs!r}, seed={self.seed!r}, ...)"

    def __sklearn_is_fitted__(self) -> bool:
        """Fitted once :meth:`fit` or :meth:`load` has set the map."""
        return self.module_ is not None

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        X: Any,
        y: Any = None,
        *,
        pairs: Mapping[str, np.ndarray] | None = None,
        labels: np.ndarray | None = None,
        probe: Probe | None = None,
        val_score: Callable[[SkipRefiner], float] | None = None,
        candidates: Mapping[str, nn.Module] | None = None,
    ) -> SimSkip:
        """Train the refiner on embeddings ``X`` (n, d): numpy array, np.memmap or torch tensor.

        A memmap is not read into memory: the trainer reads it batch by batch (set
        ``augment_fit_rows`` to fit the augmentations' statistics on a sample too).

        Args:
            y: ignored (scikit-learn's convention for a label-free transformer); pass ``labels=`` for
                few-label mode.
            pairs: external positive pairs by name, each (m, 2) integer row indices into ``X``.
            labels: (n,) class labels with -1 for unlabelled rows (few-label mode, label-using). In
                auto mode without a probe they are the default probe's labels only, and the refiner
                is trained label-free (no leak from training into validation).
            probe: auto mode's probe (overrides the constructor's).
            candidates: extra maps auto mode compares, by name (torch modules (n, d) -> (n, d'),
                fitted on training rows only; opt-in compositions such as a refiner fitted on a
                baseline's output go here). Only modules of a known kind can be saved.
            val_score: early-stopping criterion ``val_score(refiner) -> float`` (higher is better);
                default: the contrastive loss on held-out rows.
        """
        tic = time.perf_counter()
        config = self._check_params()
        probe = self.probe if probe is None else probe
        if self.mode == "auto" and probe is None and labels is None:
            raise ValueError(NO_PROBE_MESSAGE)
        if candidates is not None and self.mode != "auto":
            raise ValueError("candidates= are compared by auto mode only; pass mode='auto' or drop them.")
        x = _training_rows(X)
        n, d = x.shape
        config, notes = _fit_batch_size(config, n)
        probe_labels = self.mode == "auto" and probe is None
        if probe_labels:
            notes.append("auto mode: labels used by the probe only; the refiner is trained label-free")
        train_labels = None if probe_labels else labels
        signals = build_signals(n, x=x, mutual_knn=self.mutual_knn, pairs=pairs, labels=train_labels)
        loss_fn = loss_resolver.make(self.loss, self.loss_kwargs or None)
        if getattr(loss_fn, "requires_signals", False) and not signals:
            raise ValueError(
                f"loss {type(loss_fn).__name__} weights several positive-pair signals but none was given; "
                "pass pairs=..., labels=... or mutual_knn=k."
            )
        torch.manual_seed(self.seed)
        refiner = SkipRefiner(d, **self.architecture)
        with _read_only_shared(x):
            history = fit_refiner(
                x, refiner, loss_fn, build_augmentation(self.augment), signals, config, val_score=val_score
            )
        for record in history:
            record.setdefault("batch_size", config.batch_size)
        self.history_ = history
        self.fit_notes_ = notes
        self.loss_state_ = loss_fn.summary()
        self.refiner_ = refiner
        self.dim_ = d
        self.signals_ = [s.name for s in signals]
        self.uses_labels = labels is not None
        self.module_ = refiner
        self.selection_ = None
        if self.mode == "auto":
            with _read_only_shared(x):
                self._select(x, probe, labels, candidates)
        self.fit_seconds_ = time.perf_counter() - tic
        return self

    def candidate_maps(self, X: Any, extra: Mapping[str, nn.Module] | None = None) -> dict[str, nn.Module]:
        """Auto mode's candidate maps for rows ``X`` after training: the identity, the baselines of
        ``candidates`` fitted on ``X`` (on a seeded sample of :data:`BASELINE_FIT_ROWS` rows when
        ``X`` has more), the refiner, its blends ``simskip@alpha`` and ``extra``.

        Raises ``ValueError`` when an ``extra`` name clashes with a core candidate.
        """
        if self.refiner_ is None:
            raise RuntimeError("candidate_maps needs a trained refiner; call fit(X) first.")
        x = _baseline_rows(as_matrix(X), self.seed)
        modules: dict[str, nn.Module] = {"identity": nn.Identity()}
        for name in self.candidates:
            modules[name] = baseline_resolver.make(name).fit(x).module()
        modules["simskip"] = self.refiner_
        for alpha in self.alphas:
            blend = copy.deepcopy(self.refiner_)
            blend.residual_scale = alpha
            modules[f"simskip@{alpha:g}"] = blend
        for name, module in (extra or {}).items():
            if name in modules:
                raise ValueError(f"candidate name {name!r} clashes with a core candidate; rename it.")
            if not isinstance(module, nn.Module):
                raise TypeError(f"candidate {name!r} must be a torch.nn.Module, got {type(module).__name__}.")
            modules[name] = module
        return modules

    def select(
        self,
        X: Any,
        *,
        probe: Probe | None = None,
        labels: np.ndarray | None = None,
        candidates: Mapping[str, nn.Module] | None = None,
    ) -> SimSkip:
        """Run auto mode's selection step on this fitted model's refiner, without training again.

        The same comparison ``fit`` makes in auto mode (identity, the baselines, the refiner, its blends
        and ``candidates``, scored by ``probe`` or a label probe on ``labels``); afterwards
        :meth:`transform` applies the chosen map and :attr:`selection_` holds the report. Useful when
        the refiner was trained already (the benchmark reuses the refine-mode row's refiner this way).
        """
        if self.refiner_ is None:
            raise RuntimeError("select() compares candidates around a trained refiner; call fit(X) first.")
        if probe is None and labels is None:
            raise ValueError(NO_PROBE_MESSAGE)
        x = np.asarray(as_matrix(X), dtype=np.float32)
        self._select(x, probe, labels, candidates)
        return self

    def _select(
        self,
        x: np.ndarray,
        probe: Probe | None,
        labels: np.ndarray | None,
        extra: Mapping[str, nn.Module] | None = None,
    ) -> None:
        if probe is None:
            assert labels is not None  # checked at the start of fit()
            probe = LabelProbe(labels)
            self.uses_labels = True
        modules = self.candidate_maps(x, extra)
        if getattr(probe, "row_normalize", False):
            modules = {name: RowNormalized(module) for name, module in modules.items()}
        rows = probe_rows(probe, x.shape[0])
        scored = x if rows is None else np.asarray(x[rows], dtype=np.float32)
        vectors = _candidate_vectors(modules, scored, self.refiner_)
        report = select_candidate(vectors, probe, n_splits=self.n_splits)
        report["probe"] = repr(probe)
        report["rows_scored"] = int(scored.shape[0])
        self.selection_ = report
        self.module_ = modules[report["chosen"]]

    def fit_transform(self, X: Any, y: Any = None, **fit_kwargs: Any) -> np.ndarray:
        """``fit(X, y, **fit_kwargs).transform(X)``."""
        return self.fit(X, y, **fit_kwargs).transform(X)

    # ------------------------------------------------------------------ applying
    def _check_fitted(self) -> nn.Module:
        if self.module_ is None or self.dim_ is None:
            raise RuntimeError(
                "this SimSkip model is not fitted yet; call fit(X) first or SimSkip.load(path)."
            )
        return self.module_

    def transform(self, X: Any) -> np.ndarray:
        """Apply the fitted map to embeddings (m, d); returns a new float32 (m, d') array.

        ``X`` is read block by block (a memmap is never copied whole); a row that is not finite as
        float32, in the input or the output, raises ``ValueError`` naming the row.
        """
        module = self._check_fitted()
        assert self.dim_ is not None
        x = check_matrix(X, finite=False)  # apply_module checks each block after the float32 cast
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
    def to_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """The ``config.json`` object and the tensors :meth:`save` writes, in memory.

        For host integrations that store a SimSkip model inside a model folder of their own (the graph
        and vision plugins): write both with :func:`~simskip_core.serialization.write_model_dir` and
        rebuild with :meth:`from_state`.
        """
        module = self._check_fitted()
        assert self.refiner_ is not None
        kind, module_config = _describe_module(module)
        config = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "simskip_version": __version__,
            "dim": self.dim_,
            "params": self.config_dict(),
            "module": {"kind": kind, "config": module_config},
            "refiner": self.refiner_.config(),
            "history": self.history_,
            "fit_notes": list(getattr(self, "fit_notes_", [])),
            "loss_state": self.loss_state_,
            "selection": self.selection_,
            "uses_labels": self.uses_labels,
            "signals": self.signals_,
        }
        tensors = {f"refiner.{k}": v for k, v in self.refiner_.state_dict().items()}
        if module is not self.refiner_:
            tensors.update({f"module.{k}": v for k, v in module.state_dict().items()})
        return config, tensors

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the model to folder ``path`` (config.json + model.safetensors), atomically.

        ``overwrite=True`` replaces only an empty folder or a folder holding a saved simskip model;
        any other existing path is refused (see :func:`~simskip_core.serialization.atomic_folder`).
        """
        config, tensors = self.to_state()
        return write_model_dir(path, config, tensors, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path) -> SimSkip:
        """Load a model saved with :meth:`save` (also by an earlier simskip).

        Incomplete, corrupt or inconsistent folders raise :class:`CorruptModelError` naming the file or
        the ``config.json`` key; an unreadable file raises ``PermissionError``.
        """
        config, tensors = read_model_dir(path)
        return cls.from_state(config, tensors, where=Path(path).expanduser() / CONFIG_NAME)

    @classmethod
    def from_state(
        cls, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], *, where: str | Path = "config"
    ) -> SimSkip:
        """Rebuild a model from what :meth:`to_state` returned (checked as :meth:`load` checks a folder;
        problems are :class:`CorruptModelError` naming ``where`` and the key)."""
        where = Path(where)
        config, tensors = dict(config), dict(tensors)
        _check_format(config, where)
        dim = _get(config, "dim", _INT, where)
        if not _is_positive_int(dim):
            raise CorruptModelError(f"{where}: key 'dim' must be a positive integer, got {dim!r}.")
        model = _model_from_params(cls, _get(config, "params", (dict,), where), where)
        refiner = _restore_refiner(_get(config, "refiner", (dict,), where), tensors, int(dim), where)
        module = _restore_module(_get(config, "module", (dict,), where), tensors, refiner, int(dim), where)
        model.refiner_ = refiner
        model.module_ = module
        model.dim_ = int(dim)
        model.history_ = _get(config, "history", (list,), where, [])
        model.fit_notes_ = _get(config, "fit_notes", (list,), where, [])
        model.loss_state_ = dict(_get(config, "loss_state", (dict,), where, {}))
        model.selection_ = _get(config, "selection", (dict, _OPTIONAL), where, None)
        model.uses_labels = _get(config, "uses_labels", (bool,), where, False)
        model.signals_ = list(_get(config, "signals", (list,), where, []))
        return model


# ---------------------------------------------------------------------------------------------- fit helpers
def _baseline_rows(x: np.ndarray, seed: int) -> np.ndarray:
    """``x``, or a seeded sample of :data:`BASELINE_FIT_ROWS` of its rows (sorted) when it has more: the
    baselines' mean and covariance cost O(rows x d^2), a bounded sample keeps selection O(1) in the rows."""
    if x.shape[0] <= BASELINE_FIT_ROWS:
        return x
    rows = np.sort(np.random.default_rng(seed).choice(x.shape[0], size=BASELINE_FIT_ROWS, replace=False))
    return np.asarray(x[rows])


def _candidate_vectors(
    modules: Mapping[str, nn.Module], x: np.ndarray, refiner: SkipRefiner | None
) -> dict[str, np.ndarray]:
    """Each candidate applied once to ``x``; a blend of the refiner is computed from the refiner's output
    (alpha * f(x) + (1 - alpha) * x is exact when the refiner does not normalise its output)."""
    vectors: dict[str, np.ndarray] = {}
    refined = None
    for name, module in modules.items():
        if isinstance(module, nn.Identity):
            vectors[name] = np.asarray(x, dtype=np.float32)
        elif isinstance(module, SkipRefiner) and refiner is not None and _is_blend_of(module, refiner):
            if refined is None:
                refined = apply_module(refiner, x)
            alpha = float(module.residual_scale)
            vectors[name] = (alpha * refined + (1.0 - alpha) * x).astype(np.float32)
        else:
            vectors[name] = apply_module(module, x)
    return vectors


def _is_blend_of(module: SkipRefiner, refiner: SkipRefiner) -> bool:
    """Whether ``module`` is ``refiner`` or a copy of it with another ``residual_scale`` (and no output norm)."""
    if module.normalize_output or refiner.normalize_output or refiner.residual_scale != 1.0:
        return False
    if module is refiner:
        return True
    mine, theirs = module.state_dict(), refiner.state_dict()
    return mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def _is_positive_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool) and int(value) >= 1


def _training_rows(X: Any) -> np.ndarray:
    """The checked input as the trainer should see it: memmaps stay lazy, other arrays float32 in memory."""
    x = check_matrix(X)
    if isinstance(x, np.memmap) or x.dtype == np.float32:
        return x
    return x.astype(np.float32)


def _fit_batch_size(config: TrainConfig, n: int) -> tuple[TrainConfig, list[str]]:
    """Cap the batch size to the training rows (the trainer's split: round(n * val_fraction), 0 if < 2)."""
    n_val = round(n * config.val_fraction) if config.val_fraction else 0
    if n_val < 2:
        n_val = 0
    n_train = n - n_val
    if n_train < 2:
        held = f" ({n_val} held out for validation)" if n_val else ""
        raise ValueError(
            f"X has {n} row(s){held}, but training needs at least 2 training rows (negatives come from the "
            "batch); pass more rows" + (" or a smaller val_fraction." if n_val else ".")
        )
    if config.batch_size <= n_train:
        return config, []
    note = (
        f"batch_size capped from {config.batch_size} to {n_train}, the training rows "
        f"({n} rows, {n_val} held out for validation)"
    )
    logger.warning("SimSkip.fit: %s", note)
    return dataclasses.replace(config, batch_size=n_train), [note]


@contextlib.contextmanager
def _read_only_shared(x: np.ndarray) -> Iterator[None]:
    """Let torch share a read-only array (an Arrow batch) without its "not writable" warning.

    simskip only reads its input; torch warns because it cannot mark the shared tensor read-only.
    """
    if x.flags.writeable:
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="The given NumPy array is not writable", category=UserWarning
        )
        yield


def _loss_name(loss: Any) -> str:
    if isinstance(loss, ContrastiveLoss):
        return str(loss_resolver.normalize_inst(loss))
    if isinstance(loss, type):
        return str(loss_resolver.normalize_cls(loss))
    return str(loss_resolver.normalize(loss))


def _loss_label(loss: Any) -> str:
    return loss.__name__ if isinstance(loss, type) else type(loss).__name__


# ---------------------------------------------------------------------------------------------- load helpers
_MISSING = object()


def _get(
    config: dict[str, Any], key: str, types: tuple[type, ...], where: Path, default: Any = _MISSING
) -> Any:
    """``config[key]`` checked against ``types``; a missing (without default) or ill-typed value is corrupt."""
    if key not in config:
        if default is _MISSING:
            raise CorruptModelError(
                f"{where}: key {key!r} is missing; the saved model is corrupt. Save it again."
            )
        return default
    value = config[key]
    if not _has_type(value, types, boolean=bool in types):
        raise CorruptModelError(
            f"{where}: key {key!r} has the wrong type ({type(value).__name__}: {value!r:.60}); "
            "the saved model is corrupt. Save it again."
        )
    return value


def _has_type(value: Any, types: tuple[type, ...], *, boolean: bool) -> bool:
    if isinstance(value, bool) and not boolean:
        return False
    return isinstance(value, types)


def _check_format(config: dict[str, Any], where: Path) -> None:
    fmt = config.get("format")
    if fmt != FORMAT:
        raise CorruptModelError(
            f"{where.parent} does not hold a simskip model (config.json has format {fmt!r}, expected {FORMAT!r})."
        )
    version = _get(config, "format_version", _INT, where)
    if version < 1:
        raise CorruptModelError(f"{where}: key 'format_version' must be >= 1, got {version!r}.")
    if version > FORMAT_VERSION:
        raise CorruptModelError(
            f"{where.parent} was saved by a newer simskip (format_version {version}); upgrade simskip to load it."
        )


def _model_from_params(cls: type[SimSkip], params: dict[str, Any], where: Path) -> SimSkip:
    """Rebuild the estimator from config.json's ``"params"`` (every key type-checked)."""
    unknown = sorted(set(params) - set(_SAVED_PARAM_TYPES) - set(_NEWER_PARAM_TYPES))
    if unknown:
        raise CorruptModelError(
            f"{where}: key 'params' holds unknown parameter(s) {unknown}; save the model again."
        )
    checked: dict[str, Any] = {}
    for table, required in ((_SAVED_PARAM_TYPES, True), (_NEWER_PARAM_TYPES, False)):
        for name, types in table.items():
            if name not in params:
                if required:
                    raise CorruptModelError(f"{where}: key 'params.{name}' is missing; save the model again.")
                continue
            if not _has_type(params[name], types, boolean=name in _BOOL_PARAMS):
                raise CorruptModelError(
                    f"{where}: key 'params.{name}' has the wrong type ({type(params[name]).__name__}: "
                    f"{params[name]!r:.60}); save the model again."
                )
            checked[name] = params[name]
    checked["augment"] = tuple(_augment_item(item, where) for item in checked["augment"])
    checked["alphas"] = tuple(checked["alphas"])
    checked["candidates"] = tuple(checked["candidates"])
    try:
        return cls(**checked)
    except (TypeError, ValueError, KeyError) as error:
        raise CorruptModelError(
            f"{where}: key 'params' is invalid ({error}); save the model again."
        ) from error


def _augment_item(item: Any, where: Path) -> tuple[str, dict[str, Any]]:
    if isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], dict):
        return item[0], item[1]
    raise CorruptModelError(
        f"{where}: key 'params.augment' must list [name, kwargs] pairs, got {item!r:.60}; save the model again."
    )


def _restore_refiner(
    refiner_config: dict[str, Any], tensors: dict[str, torch.Tensor], dim: int, where: Path
) -> SkipRefiner:
    if refiner_config.get("dim") != dim:
        raise CorruptModelError(
            f"{where}: key 'dim' is {dim} but key 'refiner' describes a {refiner_config.get('dim')!r}-d refiner; "
            "the saved model is inconsistent. Save it again."
        )
    try:
        refiner = SkipRefiner(**refiner_config)
        refiner.load_state_dict(
            {k[len("refiner.") :]: v for k, v in tensors.items() if k.startswith("refiner.")}
        )
    except (TypeError, ValueError, RuntimeError) as error:
        raise CorruptModelError(
            f"{where}: key 'refiner' is inconsistent with the weights in model.safetensors ({error}); save it again."
        ) from error
    return refiner.eval()


def _restore_module(
    module_config: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    refiner: SkipRefiner,
    dim: int,
    where: Path,
) -> nn.Module:
    kind = _get(module_config, "kind", (str,), where)
    config = _get(module_config, "config", (dict,), where)
    module_tensors = {k[len("module.") :]: v for k, v in tensors.items() if k.startswith("module.")}
    try:
        module = _build_module(kind, config, module_tensors, refiner)
        with torch.inference_mode():
            module.eval()(torch.zeros(2, dim))
    except (KeyError, TypeError, RuntimeError, ValueError) as error:
        raise CorruptModelError(
            f"{where}: key 'module' is inconsistent with the weights in model.safetensors ({error}); save it again."
        ) from error
    return module


def _describe_module(module: nn.Module) -> tuple[str, dict[str, Any]]:
    if isinstance(module, SkipRefiner):
        return "refiner", module.config()
    if isinstance(module, AffineMap):
        return "affine", {"normalize": module.normalize, "has_weight": module.weight is not None}
    if isinstance(module, nn.Identity):
        return "identity", {}
    if isinstance(module, RowNormalized):
        kind, config = _describe_module(module.inner)
        return "normalized", {"inner_kind": kind, "inner_config": config}
    raise TypeError(
        f"cannot save a module of type {type(module).__name__}; only the core's candidate maps can be saved."
    )


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
    if kind == "normalized":
        inner = {k[len("inner.") :]: v for k, v in tensors.items() if k.startswith("inner.")}
        return RowNormalized(
            _build_module(config["inner_kind"], config["inner_config"], inner, refiner)
        ).eval()
    raise ValueError(f"unknown module kind {kind!r}")
