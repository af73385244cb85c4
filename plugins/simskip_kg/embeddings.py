"""Read entity and relation vectors out of a PyKEEN model and write refined vectors back into a copy.

PyKEEN keeps every :class:`~pykeen.nn.representation.Embedding` in a ``torch.nn.Embedding`` weight of
shape ``(max_id, storage_dim)``. Real embeddings are stored as they are; complex embeddings (ComplEx,
RotatE, ...) are stored as real pairs, ``[re_0, im_0, re_1, im_1, ...]``. The vectors this module
hands to SimSkip are exactly that storage, concatenated over the model's entity representations (one
for TransE/DistMult/ComplEx/RotatE; two for e.g. TransD), so reading then writing is bit-exact.

Three PyKEEN behaviours matter for write-back, and :func:`with_entity_vectors` handles each:

* the entity **constrainer** (TransE and DistMult L2-normalise entity rows after every optimiser step)
  is applied to the written rows, so the new model satisfies its own constraint; rows that already
  satisfy it (to 1e-6) are written unchanged, which keeps a raw round trip exact;
* ``reset_parameters_()`` (called by PyKEEN's training loop whenever it starts fresh) would replace
  written rows with a random init: the written rows become the representation's initializer
  (a :class:`~pykeen.nn.init.PretrainedInitializer`), so a reset restores them instead;
* complex storage: rows are written in the real-pair layout they were read in.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pykeen.models import ERModel
from pykeen.nn.init import PretrainedInitializer
from pykeen.nn.representation import Embedding

from simskip_kg.errors import KGInputError, UnsupportedModelError

__all__ = [
    "EmbeddingLayout",
    "RepresentationBlock",
    "entity_rows_normalised",
    "extract_entity_vectors",
    "extract_relation_vectors",
    "with_entity_vectors",
    "with_relation_vectors",
]

Kind = Literal["entity", "relation"]


@dataclass(frozen=True)
class RepresentationBlock:
    """Where one PyKEEN ``Embedding`` sits in the concatenated vectors.

    Attributes:
        index: position in ``model.entity_representations`` (or ``relation_representations``).
        start: first column of this representation in the concatenated matrix.
        stop: one past its last column.
        complex: whether the representation is complex (columns are interleaved real/imaginary pairs).
        shape: PyKEEN's shape of one representation (complex dimensions count once).
        constrainer: name of the representation's constrainer, or None.
    """

    index: int
    start: int
    stop: int
    complex: bool
    shape: tuple[int, ...]
    constrainer: str | None


@dataclass(frozen=True)
class EmbeddingLayout:
    """How the columns of an extracted matrix map to a model's representations.

    Attributes:
        kind: ``"entity"`` or ``"relation"``.
        count: number of rows (entities or relations).
        blocks: one :class:`RepresentationBlock` per representation, in order.
        model_class: the PyKEEN model class name (for messages).
    """

    kind: Kind
    count: int
    blocks: tuple[RepresentationBlock, ...]
    model_class: str

    @property
    def dim(self) -> int:
        """Total number of real columns."""
        return self.blocks[-1].stop if self.blocks else 0

    @property
    def is_complex(self) -> bool:
        """Whether any block is stored as complex real pairs."""
        return any(block.complex for block in self.blocks)

    def describe(self) -> str:
        """One line for logs: model, kind, rows, columns and storage."""
        storage = "complex stored as (re, im) pairs" if self.is_complex else "real"
        return f"{self.model_class} {self.kind} vectors: {self.count} x {self.dim} ({storage})"


def _check_model(model: Any) -> ERModel:
    if not isinstance(model, ERModel):
        raise UnsupportedModelError(
            f"expected a PyKEEN ERModel (TransE, DistMult, ComplEx, RotatE, ...), got {type(model).__name__}; "
            "pass `result.model` of a PipelineResult or a model built from pykeen.models."
        )
    return model


def _representations(model: ERModel, kind: Kind) -> Sequence[Embedding]:
    reps = model.entity_representations if kind == "entity" else model.relation_representations
    if len(reps) == 0:
        raise UnsupportedModelError(f"{type(model).__name__} has no {kind} representations to refine.")
    for i, rep in enumerate(reps):
        if not isinstance(rep, Embedding):
            raise UnsupportedModelError(
                f"{kind} representation {i} of {type(model).__name__} is a {type(rep).__name__}, not a plain "
                "pykeen.nn.Embedding; its vectors are computed (from tokens, text or a GNN), so there is no table "
                f"to write refined vectors into. Refine the output of `model.{kind}_representations[{i}]()` with "
                "simskip_core.api.SimSkip directly, or use an embedding model (TransE, DistMult, ComplEx, RotatE)."
            )
    return reps  # type: ignore[return-value]


def _layout(model: ERModel, kind: Kind) -> EmbeddingLayout:
    blocks = []
    start = 0
    count = None
    for i, rep in enumerate(_representations(model, kind)):
        weight = rep._embeddings.weight
        if count is None:
            count = int(weight.shape[0])
        elif weight.shape[0] != count:
            raise UnsupportedModelError(
                f"{kind} representations of {type(model).__name__} hold different numbers of rows "
                f"({count} and {weight.shape[0]}); cannot align them row for row."
            )
        width = int(weight.shape[1])
        constrainer = rep.constrainer
        name = None if constrainer is None else getattr(constrainer, "__name__", type(constrainer).__name__)
        blocks.append(
            RepresentationBlock(
                index=i,
                start=start,
                stop=start + width,
                complex=bool(rep.is_complex),
                shape=tuple(rep.shape),
                constrainer=name,
            )
        )
        start += width
    return EmbeddingLayout(
        kind=kind, count=int(count or 0), blocks=tuple(blocks), model_class=type(model).__name__
    )


def _extract(model: Any, kind: Kind) -> tuple[np.ndarray, EmbeddingLayout]:
    model = _check_model(model)
    layout = _layout(model, kind)
    reps = _representations(model, kind)
    parts = [reps[b.index]._embeddings.weight.detach().cpu().float().numpy() for b in layout.blocks]
    vectors = np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.float32)
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        raise KGInputError(
            f"{type(model).__name__} {kind} embeddings hold NaN or Inf in {int(bad.sum())} row(s), first at "
            f"rows {rows}; training diverged. Retrain with a lower learning rate (or a regularizer) before refining."
        )
    return vectors, layout


def extract_entity_vectors(model: Any) -> tuple[np.ndarray, EmbeddingLayout]:
    """The entity vectors of a PyKEEN model as a float32 ``(num_entities, d)`` matrix, and their layout.

    Row ``i`` is the entity with id ``i`` in the training triples factory (``entity_to_id``). Complex
    embeddings come as real pairs (``d`` = 2 x the complex dimension), several entity
    representations are concatenated.

    Raises:
        UnsupportedModelError: the model is not an ERModel or an entity representation is not an Embedding.
        KGInputError: the embeddings hold NaN or Inf.
    """
    return _extract(model, "entity")


def extract_relation_vectors(model: Any) -> tuple[np.ndarray, EmbeddingLayout]:
    """The relation vectors of a PyKEEN model (same conventions as :func:`extract_entity_vectors`).

    With inverse triples the rows cover the inverse relations too (``model.num_relations`` rows).
    """
    return _extract(model, "relation")


def _as_tensor(vectors: Any, layout: EmbeddingLayout) -> torch.Tensor:
    if isinstance(vectors, torch.Tensor):
        vectors = vectors.detach().cpu().numpy()
    arr = np.asarray(vectors)
    if arr.ndim != 2 or arr.shape != (layout.count, layout.dim):
        raise KGInputError(
            f"{layout.model_class} expects {layout.kind} vectors of shape ({layout.count}, {layout.dim}) "
            f"({layout.describe()}), got {arr.shape}; transform the vectors extracted from this same model."
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise KGInputError(f"{layout.kind} vectors must be floating point, got dtype {arr.dtype}.")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        raise KGInputError(
            f"refined {layout.kind} vectors hold NaN or Inf in {int(bad.sum())} row(s), first at rows {rows}; "
            "the refiner diverged. Lower its learning rate or check its input."
        )
    return torch.from_numpy(np.ascontiguousarray(arr))


def _write(model: ERModel, vectors: Any, kind: Kind, *, constrain: bool, as_initializer: bool) -> None:
    layout = _layout(model, kind)
    values = _as_tensor(vectors, layout)
    reps = _representations(model, kind)
    for block in layout.blocks:
        rep = reps[block.index]
        weight = rep._embeddings.weight
        new = values[:, block.start : block.stop].to(device=weight.device, dtype=weight.dtype)
        if constrain and rep.constrainer is not None:
            shaped = new.view(layout.count, *rep._shape)
            x = torch.view_as_complex(shaped) if rep.is_complex else shaped
            with torch.no_grad():
                y = rep.constrainer(x)
            if rep.is_complex:
                y = torch.view_as_real(y)
            y = y.reshape(new.shape)
            # Rows already inside the constraint set are kept bit-exact (a raw round trip changes nothing).
            moved = ~torch.isclose(y, new, rtol=1e-5, atol=1e-6).all(dim=1)
            new = torch.where(moved.unsqueeze(1), y, new)
        with torch.no_grad():
            weight.data.copy_(new)
        if as_initializer:
            rep.initializer = PretrainedInitializer(
                tensor=weight.detach().clone().view(layout.count, *rep._shape)
            )


def entity_rows_normalised(model: Any) -> bool:
    """Whether the model keeps every entity row L2-normalised: one real Embedding block whose constrainer
    is ``torch.nn.functional.normalize`` (TransE, DistMult). Then a written row is what it scores only
    once it has unit norm, so SimSkip's auto mode normalises its candidates for such a model."""
    reps = _representations(_check_model(model), "entity")
    return len(reps) == 1 and not reps[0].is_complex and reps[0].constrainer is torch.nn.functional.normalize


def with_entity_vectors(
    model: Any, vectors: Any, *, constrain: bool = True, as_initializer: bool = True, copy_model: bool = True
) -> ERModel:
    """A deep copy of ``model`` whose entity embeddings are replaced by ``vectors``.

    Args:
        model: a PyKEEN ERModel whose entity representations are Embeddings.
        vectors: ``(num_entities, d)`` in the layout of :func:`extract_entity_vectors` (numpy or torch).
        constrain: apply the entity constrainer (e.g. TransE's L2 normalisation) to the written rows,
            as PyKEEN would after a training step. Rows that already satisfy it are left bit-exact.
        as_initializer: make the written rows the representations' initializer, so PyKEEN's
            ``reset_parameters_()`` (run by a training loop started without ``continue_training``)
            restores them instead of drawing a random init.
        copy_model: write into a deep copy (default) instead of ``model`` itself.

    Raises:
        KGInputError: wrong shape (e.g. vectors of another dataset's entities), NaN or Inf.
        UnsupportedModelError: the model has non-Embedding entity representations.
    """
    target = copy.deepcopy(_check_model(model)) if copy_model else _check_model(model)
    _write(target, vectors, "entity", constrain=constrain, as_initializer=as_initializer)
    return target


def with_relation_vectors(
    model: Any, vectors: Any, *, constrain: bool = True, as_initializer: bool = False, copy_model: bool = True
) -> ERModel:
    """A deep copy of ``model`` whose relation embeddings are replaced by ``vectors``.

    Same conventions as :func:`with_entity_vectors`; used to restore a relation re-fit from its arrays.
    """
    target = copy.deepcopy(_check_model(model)) if copy_model else _check_model(model)
    _write(target, vectors, "relation", constrain=constrain, as_initializer=as_initializer)
    return target
