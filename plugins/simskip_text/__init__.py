"""simskip text plugin: a SimSkip refinement stage for sentence-transformers models.

Quick start (offline, with the shipped all-MiniLM-L6-v2)::

    from simskip_text import load_default_model, refine_model

    model = load_default_model()
    refined = refine_model(model, corpus_texts, epochs=20)
    refined.encode(["a sentence"])  # refined embeddings
    refined.save("my-refined-model")  # reload: SentenceTransformer(path, trust_remote_code=True)

Heavy imports (sentence-transformers, torch models) happen only when these names are first used.
"""

from __future__ import annotations

from simskip_core.lazy import lazy_exports

__all__ = [
    "SimSkipStage",
    "attach_simskip",
    "encode_texts",
    "load_default_model",
    "model_fingerprint",
    "refine_model",
]

_EXPORTS = {
    "SimSkipStage": "simskip_text.module",
    "attach_simskip": "simskip_text.refine",
    "refine_model": "simskip_text.refine",
    "encode_texts": "simskip_text.extract",
    "load_default_model": "simskip_text.extract",
    "model_fingerprint": "simskip_text.extract",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
