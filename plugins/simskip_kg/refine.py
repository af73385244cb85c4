"""One call for a PyKEEN user: refine a trained model's entity embeddings and see what it changed.

::

    from pykeen.pipeline import pipeline
    from simskip_kg import refine_pykeen

    result = pipeline(dataset="nations", model="TransE", training_kwargs=dict(num_epochs=100))
    new_model, table = refine_pykeen(result, dataset="nations", epochs=100)
    print(table)
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from simskip_core.api import SimSkip
from simskip_core.selection import select_candidate
from simskip_kg.defaults import DEFAULT_NEIGHBOUR_TOP_K, simskip_batch_size
from simskip_kg.embeddings import extract_entity_vectors, with_entity_vectors
from simskip_kg.errors import KGInputError
from simskip_kg.evaluation import METRICS, bootstrap_difference, evaluate_link_prediction
from simskip_kg.inputs import resolve_input
from simskip_kg.pairs import neighbour_pairs
from simskip_kg.probe import ValidationMRRProbe
from simskip_kg.refit import refit_relations

__all__ = ["refine_pykeen"]
#: Row names of the metric table.
RAW, RAW_REFIT, REFINED, REFINED_REFIT = (
    "raw",
    "raw + relation re-fit",
    "refined",
    "refined + relation re-fit",
)


def refine_pykeen(
    result_or_model: Any,
    dataset: Any = None,
    *,
    refit: bool = True,
    refit_epochs: int = 50,
    refit_lr: float | None = None,
    kg_pairs: bool | None = None,
    evaluate: bool = True,
    check_trained: bool = True,
    n_boot: int = 2000,
    eval_batch_size: int = 256,
    **simskip_kwargs: Any,
) -> tuple[Any, pd.DataFrame | None]:
    """Refine the entity embeddings of a trained PyKEEN model with SimSkip; return a new model and a metric table.

    Steps: check the input; extract the entity vectors (complex ones as real pairs); fit
    :class:`~simskip_core.api.SimSkip` on them; write the refined vectors into a copy of the model
    (the entity constrainer, e.g. TransE's normalisation, is applied); optionally re-fit the
    relation embeddings with the refined entities frozen; evaluate.

    Args:
        result_or_model: a ``pykeen.pipeline.PipelineResult`` or a trained ``ERModel``.
        dataset: the dataset the model was trained on (a ``pykeen.datasets.Dataset`` or a name such as
            ``"nations"``). Needed for a bare model and for the metric table.
        refit: re-fit the relation embeddings after refining (entities frozen). The table then also
            holds the same re-fit on the raw entities, the fair control.
        refit_epochs, refit_lr: the re-fit's epochs and learning rate. With a ``PipelineResult`` the
            re-fit uses the pipeline's training loop, negative sampler and optimizer (and its learning
            rate unless ``refit_lr`` is given); with a bare model sLCWA, 16 negatives, Adam at 0.01.
        kg_pairs: pass entity neighbourhoods (entities sharing a training triple) to SimSkip as the
            pair signal ``"kg_neighbours"``. None: only when the loss needs pair signals
            (``loss="multisimilarity"``).
        evaluate: build the metric table (filtered rank-based evaluation on the test triples).
        check_trained: refuse models that rank their training triples at chance (see :mod:`simskip_kg.inputs`).
        n_boot: bootstrap resamples for the intervals of the MRR differences.
        eval_batch_size: evaluation batch size.
        **simskip_kwargs: arguments of :class:`~simskip_core.api.SimSkip` (``epochs``, ``loss``, ``seed``,
            ``mode="auto"``, ...). ``batch_size`` defaults to one that fits the number of entities;
            with ``mode="auto"`` and no ``probe``, the probe is the validation-triple MRR
            (:class:`~simskip_kg.probe.ValidationMRRProbe`).

    Returns:
        ``(new_model, table)``: the refined (and re-fitted) copy, and a pandas DataFrame indexed by
        variant (``raw``, ``refined``, and with ``refit`` also ``raw + relation re-fit`` and
        ``refined + relation re-fit``) with columns ``mrr``, ``hits@1``, ``hits@3``, ``hits@10``,
        ``reference`` (the row a variant is compared with), ``mrr_delta`` with its 95 % paired
        bootstrap interval over test triples (``mrr_delta_low``, ``mrr_delta_high``) and ``seconds``
        (time of the step that produced the variant). ``table.attrs`` holds the fitted SimSkip model
        (``"simskip"``) and the settings. ``table`` is None when ``evaluate=False``.

    Raises:
        DatasetMismatchError, UntrainedModelError, UnsupportedModelError, KGInputError: see :mod:`simskip_kg.inputs`.
    """
    inp = resolve_input(result_or_model, dataset, check=check_trained)
    if evaluate and inp.dataset is None:
        raise KGInputError(
            "the metric table needs the dataset's validation and test triples; pass dataset=... "
            "(e.g. dataset='nations') or evaluate=False."
        )
    progress = bool(simskip_kwargs.get("progress", True))
    seed = int(simskip_kwargs.get("seed", 0))
    x, _layout = extract_entity_vectors(inp.model)
    kwargs = dict(simskip_kwargs)
    kwargs.setdefault("batch_size", simskip_batch_size(x.shape[0], float(kwargs.get("val_fraction", 0.1))))
    if kwargs.get("mode") == "auto" and kwargs.get("probe") is None:
        if inp.dataset is None:
            raise KGInputError(
                "mode='auto' needs validation triples for its probe; pass dataset=... or a probe=."
            )
        kwargs["probe"] = ValidationMRRProbe(inp.model, inp.training, inp.dataset.validation)
    use_pairs = (
        kg_pairs if kg_pairs is not None else str(kwargs.get("loss", "ntxent")).lower() == "multisimilarity"
    )
    pairs: Mapping[str, np.ndarray] | None = None
    if use_pairs:
        pairs = {
            "kg_neighbours": neighbour_pairs(
                inp.training.mapped_triples, x.shape[0], top_k=DEFAULT_NEIGHBOUR_TOP_K
            )
        }
    timings: dict[str, float] = {}
    tic = time.perf_counter()
    simskip = SimSkip(**kwargs).fit(x, pairs=pairs)
    z = simskip.transform(x)
    timings["fit"] = time.perf_counter() - tic
    tic = time.perf_counter()
    refined = with_entity_vectors(inp.model, z)
    timings["write_back"] = time.perf_counter() - tic
    models: dict[str, Any] = {RAW: inp.model, REFINED: refined}
    seconds = {RAW: 0.0, REFINED: timings["fit"] + timings["write_back"]}
    if refit:
        for name, base in ((RAW_REFIT, inp.model), (REFINED_REFIT, refined)):
            fitted = refit_relations(
                base,
                inp.training,
                epochs=refit_epochs,
                lr=refit_lr,
                training_loop=getattr(inp.result, "training_loop", None) or "slcwa",
                seed=seed,
                progress=progress,
            )
            models[name] = fitted.model
            seconds[name] = fitted.seconds
        timings["refit"] = seconds[REFINED_REFIT]
    final = models[REFINED_REFIT if refit else REFINED]
    selection = _select_variant(models, kwargs.get("probe"), simskip) if simskip.mode == "auto" else None
    if selection is not None:
        final = models[selection["chosen"]]
    if not evaluate:
        return final, None
    assert inp.dataset is not None
    ds = inp.dataset
    if ds.validation is None:
        raise ValueError(f"dataset {ds!r} has no validation split; the filtered evaluation needs one.")
    filters = [ds.training.mapped_triples, ds.validation.mapped_triples]
    tic = time.perf_counter()
    results = {
        name: evaluate_link_prediction(
            model, ds.testing.mapped_triples, filter_triples=filters, batch_size=eval_batch_size
        )
        for name, model in models.items()
    }
    timings["evaluate"] = time.perf_counter() - tic
    references = {RAW: None, REFINED: RAW, RAW_REFIT: RAW, REFINED_REFIT: RAW_REFIT}
    rows = []
    for name in (RAW, RAW_REFIT, REFINED, REFINED_REFIT):
        if name not in results:
            continue
        row: dict[str, Any] = {"variant": name, **results[name].metrics}
        ref = references[name]
        row["reference"] = ref or ""
        if ref is None:
            row.update(mrr_delta=np.nan, mrr_delta_low=np.nan, mrr_delta_high=np.nan)
        else:
            diff, low, high = bootstrap_difference(
                results[name].items["mrr"], results[ref].items["mrr"], n_boot=n_boot, seed=seed
            )
            row.update(mrr_delta=diff, mrr_delta_low=low, mrr_delta_high=high)
        row["seconds"] = seconds[name]
        rows.append(row)
    table = pd.DataFrame(rows).set_index("variant")[
        [*METRICS, "reference", "mrr_delta", "mrr_delta_low", "mrr_delta_high", "seconds"]
    ]
    table.attrs.update(
        simskip=simskip,
        timings=timings,
        n_test_triples=int(ds.testing.mapped_triples.shape[0]),
        refit=fitted.config if refit else None,
        kg_pairs=bool(use_pairs),
        selection=selection,
    )
    return final, table


def _select_variant(models: Mapping[str, Any], probe: Any, simskip: SimSkip) -> dict[str, Any] | None:
    """Auto mode over the model variants (raw, refined, each with and without the relation re-fit),
    scored as written back by the probe's ``score_model``; None when the probe cannot score models."""
    score_model = getattr(probe, "score_model", None)
    if score_model is None or len(models) < 3:
        return None
    return select_candidate(models, score_model, n_splits=simskip.n_splits, reference=RAW)
