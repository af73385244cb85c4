"""Refine a sentence-transformers model in one call: embed a corpus, fit SimSkip, append the stage."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simskip_core.validation import as_matrix
from simskip_text.extract import check_texts, encode_texts

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from simskip_core.api import SimSkip
    from simskip_core.selection import Probe

__all__ = ["attach_simskip", "find_stage", "refine_model"]


def _check_model(model: Any) -> None:
    from sentence_transformers import SentenceTransformer

    if not isinstance(model, SentenceTransformer):
        raise TypeError(
            f"model must be a sentence_transformers.SentenceTransformer, got {type(model).__name__}; "
            "load one with SentenceTransformer(path) or simskip_text.load_default_model()."
        )


def find_stage(model: SentenceTransformer) -> int | None:
    """Position of the SimSkip stage in ``model``'s pipeline, or None when it has none."""
    from simskip_text.module import SimSkipStage

    for position, module in enumerate(model._modules.values()):
        if isinstance(module, SimSkipStage):
            return position
    return None


def _refuse_second_stage(model: SentenceTransformer) -> None:
    position = find_stage(model)
    if position is not None:
        raise ValueError(
            f"this model already has a SimSkip stage (module {position}); refining twice would fit a refiner "
            "on refined embeddings. Refine the base model instead: drop the stage with "
            f"`base = SentenceTransformer(modules=list(model)[:{position}])` or reload the original model."
        )


def attach_simskip(
    model: SentenceTransformer, simskip: SimSkip, *, inplace: bool = False, normalize: bool | None = None
) -> SentenceTransformer:
    """Append a fitted SimSkip model to ``model``'s pipeline as a :class:`~simskip_text.module.SimSkipStage`.

    Args:
        model: the sentence-transformers model whose embeddings ``simskip`` was fitted on.
        simskip: a fitted :class:`~simskip_core.api.SimSkip`.
        inplace: modify ``model`` itself; by default a deep copy is refined and ``model`` is untouched.
        normalize: L2-normalise the stage's output; default: when the pipeline ends in ``Normalize``.

    The result's ``model_card_data`` names the refined model (``simskip/<base>-simskip-<digest>``, never
    the base model's name), records the base model and carries the ``simskip`` tag. It is a
    :class:`~simskip_text.module.RefinedSentenceTransformer` (when ``model`` is a plain
    ``SentenceTransformer``): ``refined.save(path)`` writes the portable form that plain
    ``SentenceTransformer(path)`` reloads; ``refined.save(path, portable=False)`` keeps the stage.

    Raises:
        ValueError: ``model`` already has a stage, or its embedding dimension differs from the one
            ``simskip`` was fitted on.
    """
    from simskip_text.export import describe_refinement
    from simskip_text.module import SimSkipStage, as_refined, pipeline_normalizes

    _check_model(model)
    _refuse_second_stage(model)
    dim = model.get_embedding_dimension()
    fitted = getattr(simskip, "dim_", None)
    if fitted is None:
        raise ValueError("simskip is not fitted; call simskip.fit(embeddings) before attaching it.")
    if dim is not None and dim != fitted:
        raise ValueError(
            f"the model outputs {dim}-d embeddings but the SimSkip model was fitted on {fitted}-d ones; "
            "fit it on this model's embeddings (simskip_text.refine_model(model, texts))."
        )
    if normalize is None:
        normalize = pipeline_normalizes(model)
    target = model if inplace else copy.deepcopy(model)
    stage = SimSkipStage(simskip if inplace else copy.deepcopy(simskip), normalize=normalize)
    stage.to(target.device)
    target.append(stage)
    describe_refinement(target, stage.simskip)
    return as_refined(target)


def refine_model(
    model: SentenceTransformer,
    texts: Sequence[str] | None = None,
    *,
    embeddings: Any = None,
    inplace: bool = False,
    labels: np.ndarray | None = None,
    pairs: Mapping[str, np.ndarray] | None = None,
    probe: Probe | None = None,
    encode_batch_size: int = 64,
    cache_dir: str | Path | None = None,
    **simskip_kwargs: Any,
) -> SentenceTransformer:
    """Fit SimSkip on a corpus' embeddings and return the model with the refinement stage appended.

    Args:
        model: a ``SentenceTransformer``; it is left unchanged unless ``inplace=True``.
        texts: unlabelled texts of the target domain (a few hundred or more); embedded with ``model``.
        embeddings: instead of ``texts``, embeddings ``model`` already produced (n, d), e.g. cached ones.
        inplace: append the stage to ``model`` itself instead of to a copy.
        labels: (n,) labels with -1 for unlabelled rows: few-label mode (and auto mode's default probe).
        pairs: extra positive pairs by name, each (m, 2) row indices into the corpus.
        probe: auto mode's probe ``probe(Z, split_seed) -> score`` (see ``SimSkip``).
        encode_batch_size: batch size for embedding ``texts`` (``batch_size`` is SimSkip's training batch size).
        cache_dir: cache the corpus embeddings on disk there (keyed by model and texts).
        **simskip_kwargs: any :class:`~simskip_core.api.SimSkip` option (``loss``, ``epochs``,
            ``mutual_knn``, ``mode``, ``seed``, ``progress``, ...). ``progress`` also controls the
            encoding progress bar. When the pipeline ends in ``Normalize`` and ``normalize_output``
            is not given, it defaults to True, so ``stage.simskip.transform`` matches ``encode``.

    Returns:
        The refined ``SentenceTransformer``; its fitted SimSkip model is ``refined[-1].simskip``.

    Raises:
        ValueError: no or empty corpus, both ``texts`` and ``embeddings``, a model that already has a
            SimSkip stage, or embeddings whose dimension is not the model's.
        TypeError: non-string texts or a model that is not a ``SentenceTransformer``.
    """
    from simskip_core.api import SimSkip
    from simskip_text.module import pipeline_normalizes

    _check_model(model)
    _refuse_second_stage(model)
    if (texts is None) == (embeddings is None):
        raise ValueError(
            "pass exactly one of texts (to embed with the model) or embeddings (already computed with it)."
        )
    progress = bool(simskip_kwargs.get("progress", True))
    if embeddings is None:
        items = check_texts(texts)
        x = encode_texts(model, items, batch_size=encode_batch_size, progress=progress, cache_dir=cache_dir)
    else:
        x = as_matrix(embeddings, name="embeddings")
        dim = model.get_embedding_dimension()
        if dim is not None and x.shape[1] != dim:
            raise ValueError(
                f"embeddings have dimension {x.shape[1]} but the model outputs {dim}-d embeddings; "
                "pass embeddings computed with this model, or pass texts instead."
            )
    normalizes = pipeline_normalizes(model)
    if normalizes:
        simskip_kwargs.setdefault("normalize_output", True)
    simskip = SimSkip(**simskip_kwargs).fit(x, labels=labels, pairs=pairs, probe=probe)
    target = model if inplace else copy.deepcopy(model)
    return attach_simskip(target, simskip, inplace=True, normalize=normalizes)
