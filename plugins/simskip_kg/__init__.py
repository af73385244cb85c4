"""simskip kg plugin: refine the entity embeddings of trained PyKEEN models with SimSkip.

Quick start (offline: Nations ships inside pykeen)::

    from pykeen.pipeline import pipeline
    from simskip_kg import refine_pykeen

    result = pipeline(dataset="nations", model="TransE", training_kwargs=dict(num_epochs=100))
    new_model, table = refine_pykeen(result, dataset="nations", epochs=100)
    print(table)  # raw / refined, with and without a relation re-fit: MRR, Hits@k, deltas with intervals

Heavy imports (pykeen) happen only when these names are first used.
"""

from __future__ import annotations

from simskip_core.lazy import lazy_exports

__all__ = [
    "SHIPPED_DATASETS",
    "DatasetMismatchError",
    "EmbeddingLayout",
    "KGInputError",
    "ModelSpec",
    "UnsupportedModelError",
    "UntrainedModelError",
    "ValidationMRRProbe",
    "bootstrap_difference",
    "check_trained",
    "evaluate_link_prediction",
    "extract_entity_vectors",
    "extract_relation_vectors",
    "load_dataset",
    "load_or_train",
    "neighbour_pairs",
    "refine_pykeen",
    "refit_relations",
    "resolve_input",
    "with_entity_vectors",
    "with_relation_vectors",
]

_EXPORTS = {
    "DatasetMismatchError": "simskip_kg.errors",
    "KGInputError": "simskip_kg.errors",
    "UnsupportedModelError": "simskip_kg.errors",
    "UntrainedModelError": "simskip_kg.errors",
    "SHIPPED_DATASETS": "simskip_kg.datasets",
    "load_dataset": "simskip_kg.datasets",
    "EmbeddingLayout": "simskip_kg.embeddings",
    "extract_entity_vectors": "simskip_kg.embeddings",
    "extract_relation_vectors": "simskip_kg.embeddings",
    "with_entity_vectors": "simskip_kg.embeddings",
    "with_relation_vectors": "simskip_kg.embeddings",
    "bootstrap_difference": "simskip_kg.evaluation",
    "evaluate_link_prediction": "simskip_kg.evaluation",
    "check_trained": "simskip_kg.inputs",
    "resolve_input": "simskip_kg.inputs",
    "neighbour_pairs": "simskip_kg.pairs",
    "ValidationMRRProbe": "simskip_kg.probe",
    "refine_pykeen": "simskip_kg.refine",
    "refit_relations": "simskip_kg.refit",
    "ModelSpec": "simskip_kg.training",
    "load_or_train": "simskip_kg.training",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
