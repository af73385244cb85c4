"""Benchmark tasks on real KGs shipped inside pykeen (Nations, Kinships, UMLS) with TransE and DistMult.

Each task trains its own base model on the CPU (seeded sLCWA, cached as safetensors, see
:mod:`simskip_kg.training`), takes the entity embeddings as the items to refine, and evaluates a
representation by writing it back into a copy of the model and running PyKEEN's filtered
rank-based evaluation on the test triples (MRR primary; Hits@1/3/10), with per-test-triple scores
for paired bootstrap tests. Link prediction is transductive: ``train`` and ``test`` are the same
entity rows; the *triples* are split.

Besides the core's methods, each task offers the relation re-fit variants: the raw entities with
their relations re-fitted (the fair control) and SimSkip-refined entities with their relations
re-fitted (see :mod:`simskip_kg.refit`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import numpy as np

from simskip_core.embeddings import EmbeddingSet
from simskip_core.tasks import EvalResult, LoadOptions, Method, MethodOutput, Task, TaskData
from simskip_kg.defaults import DEFAULT_NEIGHBOUR_TOP_K, simskip_batch_size

__all__ = [
    "DATASETS",
    "MODELS",
    "REFIT_EPOCHS",
    "default_probe",
    "evaluate",
    "kg_tasks",
    "pair_signals",
    "refit_methods",
]

#: Dataset name -> (pykeen name, number of entities, whether it is part of the quick suite).
DATASETS: dict[str, tuple[str, int, bool]] = {
    "nations": ("nations", 14, True),
    "kinships": ("kinships", 104, False),
    "umls": ("umls", 135, False),
}
#: Base models the tasks train.
MODELS: tuple[str, ...] = ("transe", "distmult")
#: Base-model training epochs (full suite, quick suite).
TRAIN_EPOCHS = {"full": 100, "quick": 30}
#: Relation re-fit epochs of the re-fit methods (full suite, quick suite).
REFIT_EPOCHS = {"full": 50, "quick": 20}
NEIGHBOURS = "kg_neighbours"
#: Key of the re-fitted relation vectors in a re-fit method's ``MethodOutput.extras``.
RELATIONS = "relations"


def _loader(dataset: str, model: str) -> Any:
    def load(options: LoadOptions) -> TaskData:
        from simskip_kg.datasets import load_dataset
        from simskip_kg.embeddings import extract_entity_vectors
        from simskip_kg.training import ModelSpec, load_or_train

        ds = load_dataset(
            DATASETS[dataset][0]
        )  # from the wheel's files; PyKEEN's pickled cache is never read
        spec = ModelSpec(
            dataset=dataset,
            model=model,
            epochs=TRAIN_EPOCHS["quick" if options.quick else "full"],
            seed=options.seed,
        )
        kg_model, info = load_or_train(
            spec,
            ds.training,
            cache_dir=options.cache_dir,
            use_cache=options.use_cache,
            progress=options.progress,
        )
        vectors, layout = extract_entity_vectors(kg_model)
        id_to_entity = {i: label for label, i in ds.entity_to_id.items()}
        meta = {
            "domain": "kg",
            "dataset": dataset,
            "model": model,
            "spec": asdict(spec),
            "layout": layout.describe(),
            "train_seconds": info.get("train_seconds"),
            "cached": info.get("cached"),
        }
        entities = EmbeddingSet(vectors, ids=[id_to_entity[i] for i in range(len(vectors))], meta=meta)
        context = {
            "model": kg_model,
            "dataset": ds,
            "spec": spec,
            "train_info": info,
            "quick": options.quick,
        }
        return TaskData(train=entities, test=entities, context=context)

    return load


def kg_tasks() -> list[Task]:
    """``kg/<dataset>-<model>`` for Nations, Kinships and UMLS with TransE and DistMult (quick: Nations)."""
    tasks = []
    for dataset, (pykeen_name, n_entities, quick) in DATASETS.items():
        for model in MODELS:
            tasks.append(
                Task(
                    name=f"kg/{dataset}-{model}",
                    domain="kg",
                    description=f"{dataset.capitalize()} link prediction, {model} trained on CPU; filtered MRR",
                    source=f"pykeen.datasets.{pykeen_name} (inside the pykeen wheel); base model trained by the task",
                    load=_loader(dataset, model),
                    primary_metric="mrr",
                    metrics=("mrr", "hits@1", "hits@3", "hits@10"),
                    defaults={"epochs": 100, "batch_size": simskip_batch_size(n_entities)},
                    quick=quick,
                    evaluate=evaluate,
                    default_probe=default_probe,
                    pair_signals=pair_signals,
                    methods=tuple(refit_methods()),
                )
            )
    return tasks


def evaluate(
    data: TaskData,
    train: np.ndarray,
    test: np.ndarray,
    seed: int,
    extras: Mapping[str, Any] | None = None,
) -> EvalResult:
    """Write ``test`` (entity vectors) into a copy of the task's model and run the filtered evaluation.

    When the method's ``extras`` hold re-fitted relation vectors (key ``"relations"``, set by the
    relation re-fit methods), they are written too.
    """
    from simskip_kg.embeddings import with_entity_vectors, with_relation_vectors
    from simskip_kg.evaluation import evaluate_link_prediction

    ds = data.context["dataset"]
    model = with_entity_vectors(data.context["model"], test)
    relations = (extras or {}).get(RELATIONS)
    if relations is not None:
        model = with_relation_vectors(model, relations, copy_model=False)
    return evaluate_link_prediction(
        model,
        ds.testing.mapped_triples,
        filter_triples=[ds.training.mapped_triples, ds.validation.mapped_triples],
    )


def pair_signals(data: TaskData) -> dict[str, np.ndarray]:
    """``{"kg_neighbours": pairs}``: entities sharing a training triple, top 5 per entity by shared triples."""
    from simskip_kg.pairs import neighbour_pairs

    ds = data.context["dataset"]
    return {
        NEIGHBOURS: neighbour_pairs(
            ds.training.mapped_triples, len(data.train), top_k=DEFAULT_NEIGHBOUR_TOP_K
        )
    }


def default_probe(data: TaskData) -> Any:
    """Filtered MRR on random halves of the validation triples (:class:`~simskip_kg.probe.ValidationMRRProbe`)."""
    from simskip_kg.probe import ValidationMRRProbe

    ds = data.context["dataset"]
    return ValidationMRRProbe(data.context["model"], ds.training, ds.validation)


def _refit_output(data: TaskData, model: Any, seed: int, fit_seconds: float, **info: Any) -> MethodOutput:
    from simskip_kg.embeddings import extract_entity_vectors, extract_relation_vectors
    from simskip_kg.refit import refit_relations

    epochs = REFIT_EPOCHS["quick" if data.context.get("quick") else "full"]
    result = refit_relations(model, data.context["dataset"].training, epochs=epochs, seed=seed)
    entities, _ = extract_entity_vectors(result.model)
    relations, _ = extract_relation_vectors(result.model)
    return MethodOutput(
        train=entities,
        test=entities,
        fit_seconds=fit_seconds + result.seconds,
        info={
            **info,
            "refit_seconds": round(result.seconds, 3),
            "refit_epochs": epochs,
            "refit_final_loss": result.losses[-1] if result.losses else None,
            "apply_seconds": 0.0,
        },
        extras={RELATIONS: relations},
    )


def _run_raw_refit(task: Task, data: TaskData, seed: int, state: dict[str, Any]) -> MethodOutput:
    return _refit_output(data, data.context["model"], seed, 0.0, entities="raw")


def _run_refined_refit(task: Task, data: TaskData, seed: int, state: dict[str, Any]) -> MethodOutput:
    from simskip_core.api import SimSkip
    from simskip_core.bench.methods import simskip_kwargs
    from simskip_kg.embeddings import with_entity_vectors

    tic = time.perf_counter()
    refiner = SimSkip(**simskip_kwargs(task, loss="ntxent"), seed=seed, progress=False)
    refined = refiner.fit_transform(data.train.vectors)
    model = with_entity_vectors(data.context["model"], refined)
    fit_seconds = time.perf_counter() - tic
    return _refit_output(
        data, model, seed, fit_seconds, entities="simskip-ntxent", epochs_run=len(refiner.history_)
    )


def _run_auto_refit(task: Task, data: TaskData, seed: int, state: dict[str, Any]) -> MethodOutput:
    """Auto mode over the entity maps (identity, baselines, refiner, blends; normalised like the model's
    entities), then over the written-back variants with and without the relation re-fit, each scored on
    validation triples exactly as it is returned."""
    from simskip_core.api import SimSkip
    from simskip_core.bench.methods import simskip_kwargs
    from simskip_core.selection import select_candidate
    from simskip_kg.embeddings import extract_entity_vectors, extract_relation_vectors, with_entity_vectors
    from simskip_kg.refit import refit_relations

    probe = default_probe(data)
    training = data.context["dataset"].training
    epochs = REFIT_EPOCHS["quick" if data.context.get("quick") else "full"]
    tic = time.perf_counter()
    refiner = SimSkip(
        **simskip_kwargs(task, loss="ntxent"), seed=seed, mode="auto", probe=probe, progress=False
    )
    refiner.fit(data.train.vectors)
    raw = data.context["model"]
    refined = with_entity_vectors(raw, refiner.transform(data.train.vectors))
    variants = {
        "raw": raw,
        "refined": refined,
        "raw + relation re-fit": refit_relations(raw, training, epochs=epochs, seed=seed).model,
        "refined + relation re-fit": refit_relations(refined, training, epochs=epochs, seed=seed).model,
    }
    selection = select_candidate(variants, probe.score_model, n_splits=refiner.n_splits, reference="raw")
    chosen = variants[selection["chosen"]]
    entities, _ = extract_entity_vectors(chosen)
    relations, _ = extract_relation_vectors(chosen)
    return MethodOutput(
        train=entities,
        test=entities,
        fit_seconds=time.perf_counter() - tic,
        info={
            "chosen": selection["chosen"],
            "entity_map": refiner.chosen,
            "selection_reason": selection["reason"],
            "probe": repr(probe),
            "uses_labels": False,
            "candidate_means": {k: round(v["mean"], 4) for k, v in selection["candidates"].items()},
            "apply_seconds": 0.0,
        },
        extras={RELATIONS: relations},
    )


def refit_methods() -> list[Method]:
    """The relation re-fit methods every KG task carries, and auto mode over the re-fit variants."""
    return [
        Method(
            "identity+relation-refit",
            "kg-refit",
            False,
            _run_raw_refit,
            description="raw entities, relation embeddings re-fitted with entities frozen (fair control)",
        ),
        Method(
            "simskip-ntxent+relation-refit",
            "kg-refit",
            False,
            _run_refined_refit,
            description="SimSkip (NT-Xent) refined entities written back, relations re-fitted with entities frozen",
        ),
        Method(
            "simskip-auto+relation-refit",
            "simskip",
            False,
            _run_auto_refit,
            description="auto mode over entity maps, then over raw / refined with and without the relation "
            "re-fit; validation-triple MRR of what is returned (label-free)",
        ),
    ]
