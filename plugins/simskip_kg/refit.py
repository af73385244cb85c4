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
from pykeen.training import training_loop_resolver

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


def refit_relations(
    model: Any,
    training: Any,
    *,
    epochs: int = 50,
    lr: float = 0.01,
    batch_size: int = 256,
    training_loop: str = "slcwa",
    num_negs_per_pos: int = 16,
    seed: int = 0,
    progress: bool = False,
) -> RefitResult:
    """Train the relation embeddings of a copy of ``model`` on ``training`` with the entities frozen.

    Args:
        model: a PyKEEN ERModel with Embedding relation representations (its entities may be refined).
        training: the training triples factory the model was trained on (``dataset.training``).
        epochs: re-fit epochs (the relations start from their current values).
        lr: Adam learning rate.
        batch_size: training batch size.
        training_loop: ``"slcwa"`` (negative sampling) or ``"lcwa"``; the model's own loss is used.
        num_negs_per_pos: negatives per positive for ``"slcwa"``.
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
    if not lr > 0:
        raise KGInputError(f"lr must be > 0, got {lr}.")
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
        "optimizer": "adam",
        "optimizer_kwargs": {"lr": lr},
        "automatic_memory_optimization": False,
    }
    if training_loop.lower() == "slcwa":
        loop_kwargs["negative_sampler_kwargs"] = {"num_negs_per_pos": num_negs_per_pos}
    start = time.perf_counter()
    try:
        loop = training_loop_resolver.make(training_loop, **loop_kwargs)
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
            "training_loop": training_loop,
            "num_negs_per_pos": num_negs_per_pos,
            "seed": seed,
        },
    )
