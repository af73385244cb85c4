"""Relation re-fit: retrain only the relation embeddings of a PyKEEN model, entities frozen.

Refining entity vectors moves them without regard to the score function (TransE's h + r ≈ t,
DistMult's <h, r, t>), so the relations learned for the old entities no longer fit. A short re-fit
of the relation embeddings against the (refined) entities repairs that geometry. Running the same
re-fit on the raw entities is the fair control: it tells a gain of refinement apart from a gain of
simply training the relations a little longer.

The re-fit uses PyKEEN's own training loop and the model's own loss, and steps around three traps:

* the training loop calls ``model.reset_parameters_()`` when it starts fresh, which would wipe every
  embedding: the reset is disabled on the copy for the duration of the re-fit;
* the optimizer is built from the parameters that require gradients when training starts: every
  parameter except the relation representations' is frozen before that;
* the entity constrainer (TransE, DistMult normalise entity rows after every step, whether or not
  they require gradients) is switched off while re-fitting, so frozen entities stay bit-exact.

Everything is restored on the returned copy (``requires_grad``, constrainers, ``reset_parameters_``).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from pykeen.models import ERModel
from pykeen.training import SLCWATrainingLoop, TrainingLoop, training_loop_resolver

from simskip_kg.embeddings import _check_model, _representations
from simskip_kg.errors import KGInputError
from simskip_kg.training import frozen_gc

__all__ = ["RefitResult", "refit_relations"]


@dataclass
class RefitResult:
    """What :func:`refit_relations` returns.

    Attributes:
        model: the re-fitted copy (relations trained, everything else identical to the input).
        losses: PyKEEN's loss per epoch.
        seconds: wall time of the re-fit.
        config: the re-fit's settings, for records.
    """

    model: ERModel
    losses: list[float]
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)


def _loop_settings(training_loop: Any) -> tuple[type[TrainingLoop], dict[str, Any], Any, dict[str, Any]]:
    """Training-loop class, extra loop kwargs, optimizer and optimizer kwargs for a name or a loop instance."""
    if isinstance(training_loop, str):
        try:
            cls = training_loop_resolver.lookup(training_loop)
        except (KeyError, ValueError) as error:
            raise KGInputError(
                f"unknown training loop {training_loop!r}; use 'slcwa', 'lcwa' or a pykeen TrainingLoop."
            ) from error
        return cls, {}, "adam", {}
    if not isinstance(training_loop, TrainingLoop):
        raise KGInputError(
            f"training_loop must be 'slcwa', 'lcwa' or a pykeen TrainingLoop, got {type(training_loop).__name__}."
        )
    extra: dict[str, Any] = {}
    if isinstance(training_loop, SLCWATrainingLoop):
        extra["negative_sampler"] = training_loop.negative_sampler
        extra["negative_sampler_kwargs"] = dict(training_loop.negative_sampler_kwargs or {})
    optimizer: Any = "adam"
    optimizer_kwargs: dict[str, Any] = {}
    if getattr(training_loop, "optimizer", None) is not None:
        optimizer = type(training_loop.optimizer)
        group = training_loop.optimizer.param_groups[0]
        # Constructor arguments only: drop the parameter list and scheduler/bookkeeping entries.
        optimizer_kwargs = {k: v for k, v in group.items() if k not in {"params", "initial_lr"}}
    return type(training_loop), extra, optimizer, optimizer_kwargs


def refit_relations(
    model: Any,
    training: Any,
    *,
    epochs: int = 50,
    lr: float | None = None,
    batch_size: int = 256,
    training_loop: Any = "slcwa",
    num_negs_per_pos: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> RefitResult:
    """Train the relation embeddings of a copy of ``model`` on ``training`` with the entities frozen.

    Args:
        model: a PyKEEN ERModel with Embedding relation representations (its entities may be refined).
        training: the training triples factory the model was trained on (``dataset.training``).
        epochs: re-fit epochs (the relations start from their current values).
        lr: learning rate (default: the given training loop's, else 0.01 with Adam).
        batch_size: training batch size.
        training_loop: ``"slcwa"`` (negative sampling) or ``"lcwa"``, or the PyKEEN ``TrainingLoop`` the
            model was trained with (``PipelineResult.training_loop``): the re-fit then uses its class,
            negative sampler and optimizer settings, so it continues the objective the model was trained
            on. The model's own loss is always used.
        num_negs_per_pos: negatives per positive for sLCWA (default: the given loop's, else 16).
        seed: seeds negative sampling and batch order (the caller's global RNG state is restored).
        progress: show PyKEEN's epoch progress bar.

    Returns:
        :class:`RefitResult` holding the re-fitted copy; ``model`` itself is not modified.

    Raises:
        KGInputError: non-positive epochs or learning rate, or a factory whose size does not match the model.
    """
    source = _check_model(model)
    if epochs < 1:
        raise KGInputError(
            f"epochs must be >= 1 for a relation re-fit, got {epochs}; skip the re-fit instead."
        )
    loop_cls, loop_extra, optimizer, optimizer_kwargs = _loop_settings(training_loop)
    if lr is None:
        lr = float(optimizer_kwargs.get("lr", 0.01))
    if not lr > 0:
        raise KGInputError(f"lr must be > 0, got {lr}.")
    optimizer_kwargs["lr"] = lr
    if loop_cls is SLCWATrainingLoop:
        sampler_kwargs = dict(loop_extra.get("negative_sampler_kwargs") or {})
        if num_negs_per_pos is not None or "num_negs_per_pos" not in sampler_kwargs:
            sampler_kwargs["num_negs_per_pos"] = num_negs_per_pos or 16
        loop_extra["negative_sampler_kwargs"] = sampler_kwargs
    if training.num_entities != source.num_entities:
        raise KGInputError(
            f"the model has {source.num_entities} entities but the training triples have {training.num_entities}; "
            "re-fit on the factory the model was trained on."
        )
    target = copy.deepcopy(source)
    entity_reps = _representations(target, "entity")
    relation_reps = _representations(target, "relation")
    grad_flags = {name: p.requires_grad for name, p in target.named_parameters()}
    constrainers = [rep.constrainer for rep in entity_reps]
    before = [rep._embeddings.weight.detach().clone() for rep in entity_reps]

    for p in target.parameters():
        p.requires_grad_(False)
    for rep in relation_reps:
        for p in rep.parameters():
            p.requires_grad_(True)
    for rep in entity_reps:
        rep.constrainer = None
    # An instance attribute shadows ERModel.reset_parameters_ while PyKEEN's loop runs.
    target.reset_parameters_ = lambda: target  # type: ignore[method-assign]

    loop_kwargs: dict[str, Any] = {
        "model": target,
        "triples_factory": training,
        "optimizer": optimizer,
        "optimizer_kwargs": optimizer_kwargs,
        "automatic_memory_optimization": False,
        **loop_extra,
    }
    start = time.perf_counter()
    try:
        loop = loop_cls(**loop_kwargs)
        with frozen_gc(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            losses = loop.train(
                triples_factory=training,
                num_epochs=epochs,
                batch_size=batch_size,
                use_tqdm=progress,
                use_tqdm_batch=False,
            )
    finally:
        del target.reset_parameters_
        for rep, constrainer in zip(entity_reps, constrainers):
            rep.constrainer = constrainer
        for name, p in target.named_parameters():
            p.requires_grad_(grad_flags[name])
    seconds = time.perf_counter() - start
    target.eval()
    for rep, old in zip(entity_reps, before):
        if not torch.equal(rep._embeddings.weight, old):  # pragma: no cover - would be a PyKEEN change
            raise RuntimeError("entity embeddings changed during a relation re-fit; they must stay frozen.")
    return RefitResult(
        model=target,
        losses=[float(x) for x in (losses or [])],
        seconds=seconds,
        config={
            "epochs": epochs,
            "lr": lr,
            "batch_size": batch_size,
            "training_loop": loop_cls.__name__,
            "optimizer": optimizer if isinstance(optimizer, str) else optimizer.__name__,
            "negative_sampler_kwargs": loop_extra.get("negative_sampler_kwargs"),
            "seed": seed,
        },
    )
