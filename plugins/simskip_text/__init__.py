"""simskip text plugin: a SimSkip refinement stage for sentence-transformers models.

Quick start (offline, with the shipped all-MiniLM-L6-v2)::

    from sentence_transformers import SentenceTransformer
    from simskip_text import load_default_model, load_refined_model, refine_model

    model = load_default_model()
    refined = refine_model(model, corpus_texts, epochs=20)
    refined.encode(["a sentence"])  # refined embeddings
    refined.save("my-refined-model")  # built-in Dense modules where exact (the default refiner)
    SentenceTransformer("my-refined-model")  # so plain sentence-transformers reloads it
    refined.save("stage-form", portable=False)  # keeps the SimSkipStage:
    load_refined_model("stage-form")  # checks the folder, runs no code from it

Heavy imports (sentence-transformers, torch models) happen only when these names are first used.
"""

from __future__ import annotations

from simskip_core.lazy import lazy_exports

__all__ = [
    "STAGE_TYPE",
    "RefinedSentenceTransformer",
    "SimSkipStage",
    "UnsafeModelError",
    "attach_simskip",
    "check_refined_folder",
    "encode_texts",
    "find_stage",
    "load_default_model",
    "load_refined_model",
    "model_fingerprint",
    "refine_model",
    "save_refined_model",
    "to_portable",
]

_EXPORTS = {
    "RefinedSentenceTransformer": "simskip_text.module",
    "SimSkipStage": "simskip_text.module",
    "attach_simskip": "simskip_text.refine",
    "find_stage": "simskip_text.refine",
    "refine_model": "simskip_text.refine",
    "STAGE_TYPE": "simskip_text.load",
    "UnsafeModelError": "simskip_text.load",
    "check_refined_folder": "simskip_text.load",
    "load_refined_model": "simskip_text.load",
    "save_refined_model": "simskip_text.export",
    "to_portable": "simskip_text.export",
    "encode_texts": "simskip_text.extract",
    "load_default_model": "simskip_text.extract",
    "model_fingerprint": "simskip_text.extract",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
