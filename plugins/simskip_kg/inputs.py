"""Resolve what a PyKEEN user passes (a ``PipelineResult`` or a model, plus a dataset) and check it.

Checks, each with an error that names the problem and the fix:

* **mismatched sizes**: the model's entity (or relation) count differs from the dataset's
  (:class:`DatasetMismatchError`);
* **another dataset**: a ``PipelineResult`` whose training triples or entity/relation id mappings
  differ from ``dataset.training`` (:class:`DatasetMismatchError`);
* **NaN/Inf embeddings** (:class:`KGInputError`);
* **untrained model**: a ``PipelineResult`` without recorded losses, or a model whose ranking of its
  own training triples is no better than chance. The latter is measured with PyKEEN's adjusted
  arithmetic mean rank index (AMRI: 0 = random ranking, 1 = perfect) on up to 1,000 sampled
  training triples (filtered, head and tail). Randomly initialised TransE, DistMult, ComplEx and
  RotatE score between -0.15 and +0.07 on Nations, Kinships and UMLS; below :data:`MIN_TRAIN_AMRI`
  (0.2) the model counts as untrained (:class:`UntrainedModelError`). The same test catches a bare
  model paired with another dataset of the same size (its entity ids mean other entities, so it
  ranks that dataset's triples at chance). ``check_trained=False`` skips it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from pykeen.datasets import Dataset
from pykeen.evaluation import RankBasedEvaluator
from pykeen.models import ERModel
from pykeen.pipeline import PipelineResult

from simskip_kg.datasets import load_dataset
from simskip_kg.embeddings import _check_model, extract_entity_vectors, extract_relation_vectors
from simskip_kg.errors import DatasetMismatchError, KGInputError, UnsupportedModelError, UntrainedModelError
from simskip_kg.evaluation import quiet_cpu_memory_warning

__all__ = ["MIN_TRAIN_AMRI", "KGInput", "check_trained", "resolve_dataset", "resolve_input", "training_amri"]

#: A model whose adjusted mean rank index on its own training triples is below this counts as untrained.
MIN_TRAIN_AMRI = 0.2
_AMRI_KEY = "both.realistic.adjusted_arithmetic_mean_rank_index"


@dataclass
class KGInput:
    """A checked model with the triples it belongs to.

    Attributes:
        model: the PyKEEN model (not copied).
        training: the training triples factory whose ids the model uses.
        dataset: the dataset (validation and test triples for evaluation), when given.
        result: the ``PipelineResult`` when one was passed.
    """

    model: ERModel
    training: Any
    dataset: Dataset | None
    result: PipelineResult | None = None


def resolve_dataset(dataset: Any) -> Dataset:
    """A PyKEEN :class:`Dataset` from an instance or a name (``"nations"``, ``"kinships"``, ``"umls"``).

    Names are built from the triples files by :func:`simskip_kg.datasets.load_dataset`, never from
    PyKEEN's pickled dataset cache.
    """
    if isinstance(dataset, Dataset):
        return dataset
    if isinstance(dataset, str):
        return load_dataset(dataset)
    raise KGInputError(
        f"dataset must be a pykeen Dataset or a dataset name, got {type(dataset).__name__}; "
        "e.g. dataset=pykeen.datasets.Nations() or dataset='nations'."
    )


def _check_sizes(model: ERModel, training: Any, where: str) -> None:
    if model.num_entities != training.num_entities:
        raise DatasetMismatchError(
            f"mismatched entity counts: the {type(model).__name__} model has {model.num_entities} entities but "
            f"{where} has {training.num_entities}; the model was trained on another dataset. Pass the dataset "
            "(and the same split) the model was trained on."
        )
    if model.num_real_relations != training.num_relations:
        raise DatasetMismatchError(
            f"mismatched relation counts: the model has {model.num_real_relations} relations but {where} has "
            f"{training.num_relations}; the model was trained on another dataset. Pass the dataset it was trained on."
        )


def _sorted_rows(triples: torch.Tensor) -> torch.Tensor:
    return torch.unique(triples, dim=0)


def _check_same_factory(trained_on: Any, given: Any) -> None:
    for kind in ("entity", "relation"):
        a = getattr(trained_on, f"{kind}_to_id", None)
        b = getattr(given, f"{kind}_to_id", None)
        if a is not None and b is not None and dict(a) != dict(b):
            differing = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            example = differing[0]
            raise DatasetMismatchError(
                f"the PipelineResult was trained on another dataset than the one given: {len(differing)} "
                f"{kind} label(s) map to other ids (e.g. {example!r} is {a.get(example)} in the model's "
                f"training factory, {b.get(example)} in dataset.training). Pass the dataset the pipeline ran on."
            )
    if trained_on.mapped_triples.shape != given.mapped_triples.shape or not torch.equal(
        _sorted_rows(trained_on.mapped_triples), _sorted_rows(given.mapped_triples)
    ):
        raise DatasetMismatchError(
            "the PipelineResult was trained on other triples than dataset.training "
            f"({trained_on.num_triples} vs {given.num_triples} training triples, or the same count with other "
            "triples); pass the dataset (and split) the pipeline ran on."
        )


def training_amri(model: ERModel, training: Any, *, max_triples: int = 1000, seed: int = 0) -> float:
    """PyKEEN's adjusted arithmetic mean rank index of ``model`` on up to ``max_triples`` training triples.

    Filtered with all training triples, head and tail prediction. 0 means a random ranking, 1 a perfect one.
    """
    mapped = training.mapped_triples
    generator = torch.Generator().manual_seed(seed)
    idx = torch.randperm(mapped.shape[0], generator=generator)[:max_triples]
    evaluator = RankBasedEvaluator(filtered=True, batch_size=256)
    was_training = model.training
    try:
        with quiet_cpu_memory_warning():
            result = evaluator.evaluate(
                model=model,
                mapped_triples=mapped[idx],
                additional_filter_triples=[mapped],
                batch_size=256,
                use_tqdm=False,
            )
    finally:
        model.train(was_training)
    return float(result.get_metric(_AMRI_KEY))


def check_trained(model: ERModel, training: Any, *, threshold: float = MIN_TRAIN_AMRI) -> float:
    """Raise :class:`UntrainedModelError` when ``model`` ranks its training triples at chance; return the AMRI."""
    amri = training_amri(model, training)
    if amri < threshold:
        raise UntrainedModelError(
            f"the {type(model).__name__} model ranks its own training triples no better than chance "
            f"(adjusted mean rank index {amri:.3f} on up to 1000 sampled training triples; a trained model scores "
            f"well above {threshold}, random initialisations score about -0.15 to 0.07). Either it was not trained "
            "(or far too briefly), or it was trained on other triples than the dataset given (its entity ids "
            "mean other entities). Train it on this dataset first, or pass check_trained=False to refine it anyway."
        )
    return amri


def resolve_input(source: Any, dataset: Any = None, *, check: bool = True) -> KGInput:
    """Turn a ``PipelineResult`` or a PyKEEN model (plus its dataset) into a checked :class:`KGInput`.

    Args:
        source: a ``pykeen.pipeline.PipelineResult`` or a trained ``ERModel``.
        dataset: the dataset the model was trained on (instance or name). Required for a bare model;
            optional for a ``PipelineResult`` (its ``training`` factory is used, and compared with
            ``dataset.training`` when both are there).
        check: run the untrained-model test (see the module docstring).

    Raises:
        UnsupportedModelError, DatasetMismatchError, UntrainedModelError, KGInputError.
    """
    result = None
    training = None
    if isinstance(source, PipelineResult):
        result = source
        model = _check_model(source.model)
        training = source.training
        if check and not source.losses:
            raise UntrainedModelError(
                "the PipelineResult records no training losses: the pipeline did not train the model "
                "(num_epochs=0?). Run pipeline(...) with training epochs first, or pass check_trained=False."
            )
    elif isinstance(source, ERModel):
        model = source
    else:
        raise UnsupportedModelError(
            f"expected a pykeen PipelineResult or a trained pykeen model, got {type(source).__name__}."
        )
    ds = None if dataset is None else resolve_dataset(dataset)
    if ds is not None:
        _check_sizes(model, ds.training, "dataset.training")
        if training is not None:
            _check_sizes(model, training, "the PipelineResult's training factory")
            _check_same_factory(training, ds.training)
        training = ds.training
    if training is None:
        raise KGInputError(
            "a bare model does not say which triples it was trained on; pass dataset=... (a pykeen Dataset or "
            "its name), e.g. refine_pykeen(model, dataset='nations')."
        )
    _check_sizes(model, training, "the training factory")
    extract_entity_vectors(model)  # raises on NaN/Inf or non-Embedding representations
    extract_relation_vectors(model)
    if check:
        check_trained(model, training)
    return KGInput(model=model, training=training, dataset=ds, result=result)
