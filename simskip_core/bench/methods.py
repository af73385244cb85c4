"""The core's generic benchmark methods, as :class:`~simskip_core.tasks.Method` objects.

Every method is fitted on the task's *training* embeddings only and returns vectors for the train and
test items. Label-free methods never read labels. The label-using rows (few-label mode and its fair
competitors) draw ``k`` labelled examples per class from the training split with :func:`sample_shots`;
the same draw is shared by every label-using method of one (task, seed) cell.

A method that does not apply to a task (no pair signals, no labels, no probe) raises
:class:`NotApplicable`; the suite records the reason and moves on.

Hyper-parameters come from ``task.defaults`` (SimSkip keyword arguments), identical for every seed;
nothing here looks at the test split except to apply an already fitted map to it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from simskip_core.api import NO_PROBE_MESSAGE, SimSkip
from simskip_core.baselines import RandomResidual, baseline_resolver
from simskip_core.selection import Probe
from simskip_core.tasks import Method, MethodOutput, Task, TaskData

__all__ = [
    "AUTO_FROM_REFINED",
    "FitMemo",
    "NotApplicable",
    "auto_from_refined",
    "core_methods",
    "default_probe",
    "fit_memo",
    "probe_uses_labels",
    "sample_shots",
    "simskip_kwargs",
    "task_pairs",
]

#: Labelled examples per class in the few-label rows unless ``--shots`` says otherwise.
_DEFAULT_SHOTS = 10
#: Keys of ``task.defaults`` the suite sets itself (per method and seed), never taken from defaults.
_RESERVED_KWARGS = frozenset({"seed", "mode", "probe", "progress", "checkpoint_dir", "resume"})
#: SimSkip keyword arguments that describe the refiner's architecture (shared with the random control).
_ARCHITECTURE_KWARGS = ("hidden_dim", "depth", "activation", "dropout", "norm", "normalize_output")
#: SimSkip parameters that do not change the trained refiner (auto mode's selection, display, resume).
_NOT_TRAINING_PARAMS = frozenset(
    {"mode", "probe", "alphas", "candidates", "n_splits", "progress", "checkpoint_dir", "resume"}
)
#: Attributes of a fitted SimSkip that describe its training (copied when auto mode reuses a refiner).
_FITTED_ATTRIBUTES = (
    "history_",
    "fit_notes_",
    "loss_state_",
    "refiner_",
    "dim_",
    "signals_",
    "uses_labels",
    "module_",
)

logger = logging.getLogger(__name__)


class NotApplicable(Exception):
    """Raised by a method's ``run`` when the task lacks what the method needs (the message says what)."""


# ---------------------------------------------------------------------------------------------- helpers
def simskip_kwargs(task: Task, *, loss: str | None = None) -> dict[str, Any]:
    """SimSkip keyword arguments for ``task``: its ``defaults`` minus the keys the suite sets itself.

    With ``loss`` given and different from the defaults' loss, the defaults' ``loss_kwargs`` (which
    belong to the other loss) are dropped and the loss's own defaults apply.
    """
    kwargs = {k: v for k, v in dict(task.defaults).items() if k not in _RESERVED_KWARGS}
    if loss is not None:
        if str(kwargs.get("loss", "ntxent")).lower() != loss:
            kwargs.pop("loss_kwargs", None)
        kwargs["loss"] = loss
    return kwargs


def _architecture(task: Task) -> dict[str, Any]:
    defaults = dict(task.defaults)
    return {k: defaults[k] for k in _ARCHITECTURE_KWARGS if k in defaults}


def _signal_mappings(task: Task, data: TaskData) -> list[Mapping[str, np.ndarray] | None]:
    if task.pair_signals is not None:
        return [task.pair_signals(data)]
    from simskip_core.plugins import get_plugin_manager

    mappings: list[Mapping[str, np.ndarray] | None] = get_plugin_manager().hook.simskip_pair_signals(
        task=task, data=data
    )
    return mappings


def task_pairs(task: Task, data: TaskData) -> dict[str, np.ndarray]:
    """Label-free positive pairs of ``task``'s training items: ``data.train.pairs`` plus the task's own
    ``pair_signals(data)``, or, for a task that carries none, every mapping the ``simskip_pair_signals``
    hook returns (names must not clash)."""
    pairs: dict[str, np.ndarray] = {name: np.asarray(arr) for name, arr in data.train.pairs.items()}
    n = len(data.train)
    for mapping in _signal_mappings(task, data):
        for name, arr in (mapping or {}).items():
            arr = np.asarray(arr)
            if arr.ndim != 2 or arr.shape[1] != 2:
                raise ValueError(
                    f"pair signal {name!r} of task {task.name} must have shape (m, 2), got {arr.shape}."
                )
            if arr.size and (arr.min() < 0 or arr.max() >= n):
                raise ValueError(f"pair signal {name!r} of task {task.name} indexes rows outside [0, {n}).")
            if name in pairs:
                raise ValueError(
                    f"task {task.name} receives two pair signals named {name!r}; names must be unique."
                )
            pairs[name] = arr.astype(np.int64)
    return {name: arr for name, arr in pairs.items() if len(arr)}


def default_probe(task: Task, data: TaskData) -> Probe | None:
    """Auto mode's probe for ``task``: the task's own ``default_probe(data)``, or, for a task that
    carries none, the ``simskip_default_probe`` hook's answer; None when there is no probe."""
    if task.default_probe is not None:
        return task.default_probe(data)
    from simskip_core.plugins import get_plugin_manager

    probe: Probe | None = get_plugin_manager().hook.simskip_default_probe(task=task, data=data)
    return probe


def probe_uses_labels(probe: Any) -> bool:
    """Whether an auto-mode probe reads class labels.

    A probe may declare it with a truthy or falsy ``uses_labels`` attribute. Without one it counts,
    conservatively, as label-using (a :class:`~simskip_core.selection.LabelProbe` reads labels), so an
    undeclared probe never places auto mode in the label-free section.
    """
    declared = getattr(probe, "uses_labels", None)
    if declared is not None:
        return bool(declared)
    return True


def sample_shots(labels: np.ndarray | None, k: int, seed: int) -> np.ndarray:
    """Row indices of ``k`` labelled training items per class (all of a class when it has fewer), drawn with ``seed``.

    Raises :class:`NotApplicable` when the training split has no labels or fewer than two classes.
    """
    if labels is None:
        raise NotApplicable("the task's training split carries no class labels")
    labels = np.asarray(labels)
    classes = np.unique(labels[labels >= 0])
    if classes.size < 2:
        raise NotApplicable("the task's training split has fewer than two labelled classes")
    if k < 1:
        raise ValueError(f"shots per class must be >= 1, got {k}.")
    rng = np.random.default_rng([seed, 7919])
    picked = [rng.permutation(np.flatnonzero(labels == c))[:k] for c in classes]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def _shots(task: Task, data: TaskData, seed: int, state: dict[str, Any]) -> np.ndarray:
    """The (task, seed) cell's shared few-label draw, created on first use."""
    if "shots" not in state:
        state["shots"] = sample_shots(
            data.train.labels, int(state.get("shots_per_class", _DEFAULT_SHOTS)), seed
        )
    shots: np.ndarray = state["shots"]
    return shots


def _masked_labels(data: TaskData, shots: np.ndarray) -> np.ndarray:
    assert data.train.labels is not None
    masked = np.full(len(data.train), -1, dtype=np.int64)
    masked[shots] = data.train.labels[shots]
    return masked


def _apply(
    transform: Callable[[np.ndarray], np.ndarray], data: TaskData
) -> tuple[np.ndarray, np.ndarray, float]:
    tic = time.perf_counter()
    train = transform(data.train.vectors)
    test = transform(data.test.vectors)
    return train, test, time.perf_counter() - tic


def _output(
    train: np.ndarray, test: np.ndarray, fit_seconds: float, apply_seconds: float, **info: Any
) -> MethodOutput:
    info["apply_seconds"] = apply_seconds
    return MethodOutput(train=train, test=test, fit_seconds=fit_seconds, info=info)


# ---------------------------------------------------------------------------------------------- fit memo
def _fingerprint(*arrays: np.ndarray | None) -> str:
    digest = hashlib.sha256()
    for arr in arrays:
        if arr is None:
            digest.update(b"none")
            continue
        arr = np.ascontiguousarray(arr)
        digest.update(f"{arr.dtype}{arr.shape}".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


class FitMemo:
    """Refine-mode SimSkip models fitted within one (task, seed) cell, so no row trains one twice.

    A model is keyed by its training parameters (``get_params()`` without what only auto mode's
    selection or the display reads), its seed and a SHA-256 of the training vectors, pair signals and
    labels it was fitted on. ``SimSkip.fit`` is seeded and deterministic on CPU, so a second fit with
    the same key would train bitwise the same weights; :meth:`fit` returns the first one instead.
    ``fits`` counts the models trained, ``reused`` the fits saved.
    """

    def __init__(self) -> None:
        self._models: dict[str, SimSkip] = {}
        self.fits = 0
        self.reused = 0

    @staticmethod
    def key(
        model: SimSkip,
        x: np.ndarray,
        pairs: Mapping[str, np.ndarray] | None = None,
        labels: np.ndarray | None = None,
    ) -> str:
        """The memo key of fitting (unfitted) ``model`` on ``x`` with ``pairs`` and ``labels``."""
        params = {k: v for k, v in model.get_params().items() if k not in _NOT_TRAINING_PARAMS}
        names = sorted(pairs or {})
        parts = [
            json.dumps(params, sort_keys=True, default=repr),
            json.dumps(names),
            _fingerprint(x, labels, *((pairs or {})[name] for name in names)),
        ]
        return hashlib.sha256("\x00".join(parts).encode()).hexdigest()

    def fit(
        self,
        kwargs: Mapping[str, Any],
        seed: int,
        x: np.ndarray,
        *,
        pairs: Mapping[str, np.ndarray] | None = None,
        labels: np.ndarray | None = None,
    ) -> tuple[SimSkip, bool]:
        """The refine-mode ``SimSkip(**kwargs, seed=seed)`` fitted on ``x``; True when it was reused."""
        model = SimSkip(**{**kwargs, "mode": "refine"}, seed=seed, progress=False)
        key = self.key(model, x, pairs, labels)
        if key in self._models:
            self.reused += 1
            return self._models[key], True
        model.fit(x, pairs=pairs, labels=labels)
        self.fits += 1
        self._models[key] = model
        return model, False


def fit_memo(state: dict[str, Any]) -> FitMemo:
    """The :class:`FitMemo` of a (task, seed) cell's shared ``state``, created on first use."""
    memo = state.setdefault("fit_memo", FitMemo())
    assert isinstance(memo, FitMemo)
    return memo


def auto_from_refined(
    refined: SimSkip, x: np.ndarray, probe: Probe, kwargs: Mapping[str, Any], seed: int
) -> SimSkip:
    """``SimSkip(**kwargs, seed=seed, mode="auto", probe=probe)`` fitted on ``x`` without training
    again: the refiner (and its history and loss state) of the already fitted refine-mode ``refined``
    is copied in, then only auto mode's selection step runs.

    Auto mode trains exactly the refine-mode refiner of the same parameters and seed before it
    selects, so the result equals a full ``fit`` (``tests/test_fit_memo.py`` checks it bit for bit).
    """
    model = SimSkip(**kwargs, seed=seed, mode="auto", probe=probe, progress=False)
    tic = time.perf_counter()
    for name in _FITTED_ATTRIBUTES:
        setattr(model, name, copy.deepcopy(getattr(refined, name)))
    model.module_ = model.refiner_
    model.select(x, probe=probe)
    model.fit_seconds_ = float(refined.fit_seconds_ or 0.0) + time.perf_counter() - tic
    return model


#: The hook through which the auto row reuses a refiner another row of its (task, seed) cell already
#: trained: ``AUTO_FROM_REFINED(refined, x, probe, kwargs, seed) -> SimSkip`` (fitted in auto mode).
#: It runs :meth:`SimSkip.select` on a copy of the trained refiner; None makes the auto row fit in full.
AUTO_FROM_REFINED: Callable[[SimSkip, np.ndarray, Probe, Mapping[str, Any], int], SimSkip] | None = (
    auto_from_refined
)


# ---------------------------------------------------------------------------------------------- methods
def _baseline(name: str) -> Callable[[Task, TaskData, int, dict[str, Any]], MethodOutput]:
    def run(task: Task, data: TaskData, seed: int, state: dict[str, Any]) -> MethodOutput:
        tic = time.perf_counter()
        model = baseline_resolver.make(name).fit(data.train.vectors)
        config, transform = model.config(), model.transform
        fit_seconds = time.perf_counter() - tic
        train, test, apply_seconds = _apply(transform, data)
        return _output(train, test, fit_seconds, apply_seconds, config=config)

    return run


def _fit_simskip(
    task: Task,
    data: TaskData,
    seed: int,
    state: dict[str, Any],
    *,
    loss: str,
    pairs: Mapping[str, np.ndarray] | None = None,
    labels: np.ndarray | None = None,
) -> tuple[SimSkip, MethodOutput]:
    kwargs = simskip_kwargs(task, loss=loss)
    model, reused = fit_memo(state).fit(kwargs, seed, data.train.vectors, pairs=pairs, labels=labels)
    train, test, apply_seconds = _apply(model.transform, data)
    info: dict[str, Any] = {
        "chosen": model.chosen,
        "signals": list(model.signals_),
        "epochs_run": len(model.history_),
        "loss_state": dict(model.loss_state_),
        "mean_shift": float(np.linalg.norm(train - data.train.vectors, axis=1).mean())
        if train.shape == data.train.vectors.shape
        else None,
    }
    if model.selection_ is not None:
        info["selection_reason"] = model.selection_["reason"]
    if reused:
        info["fit_reused"] = True  # the same model was already trained in this (task, seed) cell
    return model, _output(train, test, float(model.fit_seconds_ or 0.0), apply_seconds, **info)


def _simskip(loss: str) -> Callable[[Task, TaskData, int, dict[str, Any]], MethodOutput]:
    def run(task: Task, data: TaskData, seed: int, state: dict[str, Any]) -> MethodOutput:
        return _fit_simskip(task, data, seed, state, loss=loss)[1]

    return run


def _run_multisimilarity(task: Task, data: TaskData, seed: int, state: dict[str, Any]) -> MethodOutput:
    pairs = task_pairs(task, data)
    if not pairs:
        raise NotApplicable("the task supplies no pair signals (EmbeddingSet.pairs or Task.pair_signals)")
    return _fit_simskip(task, data, seed, state, loss="multisimilarity", pairs=pairs)[1]


def _run_pairs(task: Task, data: TaskData, seed: int, state: dict[str, Any]) -> MethodOutput:
    pairs = task_pairs(task, data)
    if not pairs:
        raise NotApplicable("the task supplies no pair signals (EmbeddingSet.pairs or Task.pair_signals)")
    return _fit_simskip(task, data, seed, state, loss="ntxent", pairs=pairs)[1]


def _run_auto(task: Task, data: TaskData, seed: int, state: dict[str, Any]) -> MethodOutput:
    probe = default_probe(task, data)
    if probe is None:
        raise NotApplicable(f"the task has no default probe (Task.default_probe): {NO_PROBE_MESSAGE}")
    kwargs = simskip_kwargs(task)
    reused = False
    if AUTO_FROM_REFINED is not None:
        refined, reused = fit_memo(state).fit(kwargs, seed, data.train.vectors)
        model = AUTO_FROM_REFINED(refined, data.train.vectors, probe, kwargs, seed)
    else:  # no separate selection step: auto mode trains its refiner itself
        model = SimSkip(**kwargs, seed=seed, mode="auto", probe=probe, progress=False)
        model.fit(data.train.vectors)
    train, test, apply_seconds = _apply(model.transform, data)
    assert model.selection_ is not None
    return _output(
        train,
        test,
        float(model.fit_seconds_ or 0.0),
        apply_seconds,
        chosen=model.chosen,
        selection_reason=model.selection_["reason"],
        probe=repr(probe),
        uses_labels=probe_uses_labels(probe),
        refiner_reused=reused,
    )


def _run_random_residual(task: Task, data: TaskData, seed: int, state: dict[str, Any]) -> MethodOutput:
    trained = state.get("simskip-ntxent") or {}
    shift = trained.get("mean_shift")
    source = "simskip-ntxent of this (task, seed) cell"
    if shift is None:
        # simskip-ntxent was filtered out: fit it here (same defaults and seed, so the same model).
        _model, out = _fit_simskip(task, data, seed, state, loss="ntxent")
        shift = out.info["mean_shift"]
        source = "simskip-ntxent fitted by the control itself"
        state["simskip-ntxent"] = out.info
    if shift is None:
        raise NotApplicable("simskip-ntxent changes the dimension, so there is no displacement to match")
    tic = time.perf_counter()
    control = RandomResidual(target_shift=float(shift), seed=seed, refiner_kwargs=_architecture(task)).fit(
        data.train.vectors
    )
    fit_seconds = time.perf_counter() - tic
    train, test, apply_seconds = _apply(control.transform, data)
    return _output(train, test, fit_seconds, apply_seconds, target_shift=float(shift), shift_source=source)


def _run_fewlabel_simskip(task: Task, data: TaskData, seed: int, state: dict[str, Any]) -> MethodOutput:
    shots = _shots(task, data, seed, state)
    out = _fit_simskip(
        task,
        data,
        seed,
        state,
        loss=str(simskip_kwargs(task).get("loss", "ntxent")),
        labels=_masked_labels(data, shots),
    )[1]
    out.info["n_shots"] = len(shots)
    return out


def _run_fewlabel_probe(task: Task, data: TaskData, seed: int, state: dict[str, Any]) -> MethodOutput:
    shots = _shots(task, data, seed, state)
    # The representation is the raw embedding; the probe is the k-shot logistic regression the suite
    # trains on these same labelled items for every label-using row (metric ``kshot_probe_acc``).
    return _output(
        data.train.vectors,
        data.test.vectors,
        0.0,
        0.0,
        n_shots=len(shots),
        representation_of="identity",
    )


def linear_adapter(
    x: np.ndarray,
    labels: np.ndarray,
    *,
    seed: int,
    steps: int = 300,
    lr: float = 1e-2,
    anchor: float = 1e-2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train a linear adapter x -> x W + b (W starts at the identity) with a softmax head on labelled rows.

    The loss is cross-entropy of the head plus ``anchor * ||W - I||^2``, full batch Adam for ``steps``
    steps. Returns (W, b).
    """
    torch.manual_seed(seed)
    xt = torch.as_tensor(x, dtype=torch.float32)
    classes, y = np.unique(labels, return_inverse=True)
    yt = torch.as_tensor(y, dtype=torch.long)
    d = xt.shape[1]
    weight = torch.nn.Parameter(torch.eye(d))
    bias = torch.nn.Parameter(torch.zeros(d))
    head = torch.nn.Linear(d, len(classes))
    optimizer = torch.optim.Adam([weight, bias, *head.parameters()], lr=lr)
    eye = torch.eye(d)
    scale = xt.std().clamp(min=1e-6)
    for _ in range(steps):
        optimizer.zero_grad()
        z = xt @ weight + bias
        loss = torch.nn.functional.cross_entropy(head(z / scale), yt) + anchor * (weight - eye).pow(2).sum()
        loss.backward()
        optimizer.step()
    return weight.detach(), bias.detach()


def _run_fewlabel_adapter(task: Task, data: TaskData, seed: int, state: dict[str, Any]) -> MethodOutput:
    shots = _shots(task, data, seed, state)
    assert data.train.labels is not None
    tic = time.perf_counter()
    weight, bias = linear_adapter(data.train.vectors[shots], data.train.labels[shots], seed=seed)
    fit_seconds = time.perf_counter() - tic

    def transform(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out: np.ndarray = (torch.as_tensor(x, dtype=torch.float32) @ weight + bias).numpy()
        return out

    train, test, apply_seconds = _apply(transform, data)
    return _output(train, test, fit_seconds, apply_seconds, n_shots=len(shots))


def core_methods() -> list[Method]:
    """The core's generic methods, in the order the suite runs them within a (task, seed) cell.

    ``random-residual`` follows ``simskip-ntxent`` so it can match its displacement through ``state``.
    """
    label_free: list[Method] = [
        Method(
            "identity",
            "baseline",
            False,
            _baseline("identity"),
            stochastic=False,
            description="the unchanged base embeddings",
        ),
        Method(
            "centerl2",
            "baseline",
            False,
            _baseline("centerl2"),
            stochastic=False,
            description="subtract the training mean, L2-normalise",
        ),
        Method(
            "whitening",
            "baseline",
            False,
            _baseline("whitening"),
            stochastic=False,
            description="ZCA whitening of the directions the training embeddings span (top min(d, n-1))",
        ),
        Method(
            "allbutthetop",
            "baseline",
            False,
            _baseline("allbutthetop"),
            stochastic=False,
            description="remove the mean and the top max(1, d/100) principal directions",
        ),
        Method(
            "simskip-ntxent",
            "simskip",
            False,
            _simskip("ntxent"),
            description="SimSkip, two augmented views, NT-Xent",
        ),
        Method(
            "simskip-studentt",
            "simskip",
            False,
            _simskip("studentt"),
            description="SimSkip with the t-SimCLR (Student-t) loss",
        ),
        Method(
            "simskip-difficulty",
            "simskip",
            False,
            _simskip("difficulty"),
            description="SimSkip, NT-Xent with difficult-pair treatment",
        ),
        Method(
            "simskip-pairs",
            "simskip",
            False,
            _run_pairs,
            description="structure-aware SimSkip: NT-Xent with the task's pair signals as extra positives",
        ),
        Method(
            "simskip-multisimilarity",
            "simskip",
            False,
            _run_multisimilarity,
            description="SimSkip multi-similarity loss over views and the task's pair signals",
        ),
        Method(
            "random-residual",
            "control",
            False,
            _run_random_residual,
            description="untrained random residual map moving embeddings as far as simskip-ntxent does",
        ),
    ]
    auto = Method(
        "simskip-auto",
        "simskip",
        True,
        _run_auto,
        description="SimSkip auto mode (no-harm guard) with the plugin's default probe on training items",
    )
    label_using: list[Method] = [
        Method(
            "fewlabel-probe",
            "probe",
            True,
            _run_fewlabel_probe,
            description="raw embeddings; logistic-regression probe on the k labelled items (reference)",
        ),
        Method(
            "fewlabel-adapter",
            "adapter",
            True,
            _run_fewlabel_adapter,
            description="linear adapter x W + b (W from I) trained with cross-entropy on the k labelled items",
        ),
        Method(
            "fewlabel-simskip",
            "simskip",
            True,
            _run_fewlabel_simskip,
            description="SimSkip few-label mode: views plus same-label positives among the k labelled items",
        ),
    ]
    return [*label_free, auto, *label_using]
