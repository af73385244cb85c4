"""Pooled features from any timm model, batched, with a progress bar and an on-disk cache.

Images go through timm's own evaluation transform (``resolve_model_data_config`` +
``create_transform``: resize, centre crop, normalise); grey images are converted to RGB first.
Features are ``model.forward_head(model.forward_features(x), pre_logits=True)``, the pooled
features a ``num_classes=0`` model returns, so a model with a classifier works unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from simskip_core.cache import cache_key, cached_arrays
from simskip_core.embeddings import EmbeddingSet
from simskip_vision._timm import import_timm, is_timm_model

__all__ = [
    "CACHE_NAMESPACE",
    "ImageSource",
    "as_image_source",
    "cached_features",
    "data_config_of",
    "extract_embeddings",
    "extract_features",
    "model_fingerprint",
]

#: Sub-folder of the cache directory that holds extracted features.
CACHE_NAMESPACE = "vision-features"
_CACHE_VERSION = "simskip-vision-features-v1"
#: Sub-folder of the feature cache mapping a model's identity (no model built) to its feature file.
_INDEX_FOLDER = "by-identity"
_INDEX_VERSION = "simskip-vision-feature-index-v1"


class ImageSource:
    """Validated images, converted lazily to RGB PIL images one at a time.

    Accepts a uint8 numpy array or torch tensor of shape (n, H, W) (grey), (n, H, W, 1),
    (n, H, W, 3) or (n, H, W, 4) (RGBA; alpha dropped), channels last, or a sequence of PIL images. Build it with :func:`as_image_source`.
    """

    def __init__(self, array: np.ndarray | None = None, pil: Sequence[Image.Image] | None = None) -> None:
        self._array = array
        self._pil = pil

    def __len__(self) -> int:
        return len(self._array) if self._array is not None else len(self._pil or ())

    def image(self, index: int) -> Image.Image:
        """Image ``index`` as an RGB PIL image."""
        if self._array is not None:
            item = self._array[index]
            if item.ndim == 3 and item.shape[2] == 1:
                item = item[:, :, 0]
            return Image.fromarray(np.ascontiguousarray(item)).convert("RGB")
        assert self._pil is not None
        return self._pil[index].convert("RGB")

    def fingerprint(self) -> str:
        """A hash of the pixels (and shapes), the cache key part that identifies these images."""
        digest = hashlib.sha256()
        if self._array is not None:
            digest.update(repr((self._array.shape, str(self._array.dtype))).encode())
            digest.update(np.ascontiguousarray(self._array).tobytes())
        else:
            for img in self._pil or ():
                digest.update(repr((img.mode, img.size)).encode())
                digest.update(img.tobytes())
        return digest.hexdigest()


def as_image_source(images: Any, *, name: str = "images") -> ImageSource:
    """Check ``images`` and wrap them as an :class:`ImageSource`.

    Raises:
        TypeError: wrong container or dtype (the message says how to convert).
        ValueError: wrong shape (channel-first, a single image without batch axis, empty input).
    """
    if isinstance(images, ImageSource):
        return images
    if isinstance(images, Image.Image):
        raise TypeError(f"{name} is a single PIL image; pass a list of images, e.g. [{name}].")
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8:
            raise TypeError(
                f"{name} is a {images.dtype} tensor; extraction takes raw uint8 pixels (0-255) and applies timm's "
                "transform itself. Convert with (x * 255).round().to(torch.uint8), or call the model directly on "
                "already normalised (n, 3, H, W) float tensors."
            )
        images = images.detach().cpu().numpy()
    if isinstance(images, np.ndarray):
        shape = images.shape
        if images.dtype != np.uint8:
            raise TypeError(
                f"{name} has dtype {images.dtype}; pass uint8 pixels 0-255 "
                "(floats in [0, 1]: (x * 255).round().astype(np.uint8))."
            )
        if images.ndim == 3 and shape[-1] in (3, 4) and min(shape[:2]) > 4:
            raise ValueError(
                f"{name} has shape {shape}, which looks like one H×W×C image; add a batch axis: {name}[None]."
            )
        if images.ndim == 4 and shape[1] in (1, 3) and shape[-1] not in (1, 3, 4):
            raise ValueError(
                f"{name} has shape {shape}, which looks channel-first (n, C, H, W); "
                f"pass channels last: {name}.transpose(0, 2, 3, 1)."
            )
        if images.ndim not in (3, 4) or (images.ndim == 4 and shape[-1] not in (1, 3, 4)):
            raise ValueError(
                f"{name} must have shape (n, H, W) for grey or (n, H, W, 3) for RGB (RGBA: 4) images, got {shape}."
            )
        if shape[0] == 0 or min(shape[1:3]) == 0:
            raise ValueError(f"{name} is empty (shape {shape}); pass at least one image.")
        return ImageSource(array=images)
    if isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
        if len(images) == 0:
            raise ValueError(f"{name} is empty; pass at least one image.")
        for i, img in enumerate(images):
            if not isinstance(img, Image.Image):
                raise TypeError(
                    f"{name}[{i}] is a {type(img).__name__}; a list must hold PIL images "
                    "(or pass one uint8 array of shape (n, H, W[, 3]))."
                )
        return ImageSource(pil=list(images))
    raise TypeError(
        f"{name} must be a uint8 numpy array or tensor of shape (n, H, W[, 3]) or a list of PIL images, "
        f"got {type(images).__name__}."
    )


def data_config_of(model: nn.Module) -> dict[str, Any]:
    """timm's evaluation data config of ``model`` (input size, interpolation, mean, std, crop)."""
    explicit = getattr(model, "data_config", None)
    if isinstance(explicit, Mapping):
        return dict(explicit)
    timm = import_timm()
    return dict(timm.data.resolve_model_data_config(model))


def _feature_fn(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    timm_model: Any = model  # timm's forward_head/forward_features are not in nn.Module's type
    if is_timm_model(model):
        return lambda x: timm_model.forward_head(timm_model.forward_features(x), pre_logits=True)
    embed: Callable[[torch.Tensor], torch.Tensor] | None = getattr(model, "embed_batch", None)
    if callable(embed):
        return embed
    raise TypeError(
        f"{type(model).__name__} is not a timm model; build one with timm.create_model(name, num_classes=0) "
        "or simskip_vision.create_backbone(name)."
    )


def model_fingerprint(model: nn.Module) -> str:
    """A hash of ``model``'s class, architecture and every tensor of its state dict (the weights' identity)."""
    digest = hashlib.sha256()
    digest.update(type(model).__qualname__.encode())
    digest.update(str(getattr(model, "pretrained_cfg", {}).get("architecture", "")).encode())
    for key, tensor in model.state_dict().items():
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(
            tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            if tensor.numel()
            else b""
        )
    return digest.hexdigest()


def _compute(
    model: nn.Module,
    source: ImageSource,
    data_config: Mapping[str, Any],
    batch_size: int,
    progress: bool,
    desc: str,
) -> np.ndarray:
    timm = import_timm()
    transform = timm.data.create_transform(**data_config, is_training=False)
    features = _feature_fn(model)
    n = len(source)
    chunks: list[np.ndarray] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), tqdm(total=n, unit="img", desc=desc, disable=not progress) as bar:
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                batch = torch.stack([transform(source.image(i)) for i in range(start, stop)])
                out = features(batch)
                if out.ndim != 2:
                    raise ValueError(
                        f"the model returned features of shape {tuple(out.shape)}, not pooled (n, d) vectors; "
                        "create it with a global pool (timm.create_model(name, num_classes=0), global_pool='avg')."
                    )
                chunks.append(out.float().cpu().numpy())
                bar.update(stop - start)
    finally:
        model.train(was_training)
    return np.concatenate(chunks).astype(np.float32, copy=False)


def extract_features(
    model: nn.Module,
    images: Any,
    *,
    batch_size: int = 64,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    data_config: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Pooled features of ``images`` under timm ``model`` (or a :class:`RefinedBackbone`): (n, d) float32.

    Args:
        model: a timm model (any ``num_classes``; pooled pre-logits features are returned) or a
            :class:`~simskip_vision.wrapper.RefinedBackbone` (refined features are returned).
        images: uint8 array/tensor (n, H, W) grey or (n, H, W, 3) RGB, or a list of PIL images.
        batch_size: images per forward pass.
        progress: show a tqdm progress bar.
        cache_dir: when given (and ``use_cache``), features are stored in
            ``cache_dir/vision-features/<key>.npz``, the key hashing the weights, the data config and
            the pixels, so a second call with the same inputs reads the file instead of running the model.
        use_cache: set False to bypass the cache.
        data_config: override timm's resolved data config (e.g. ``{"input_size": (3, 160, 160), ...}``).

    The model is put in eval mode during extraction and restored afterwards.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    feature_check = _feature_fn(model)  # raises for a non-timm model before any work
    del feature_check
    source = as_image_source(images)
    config = dict(data_config) if data_config is not None else data_config_of(model)
    desc = f"features ({getattr(model, 'pretrained_cfg', {}).get('architecture', type(model).__name__)})"

    def compute() -> dict[str, np.ndarray]:
        return {"features": _compute(model, source, config, batch_size, progress, desc)}

    if cache_dir is None:
        return compute()["features"]
    key = _feature_key(model, source, config)
    return cached_arrays(cache_dir, CACHE_NAMESPACE, key, compute, enabled=use_cache)["features"]


def _feature_key(model: nn.Module, source: ImageSource, config: Mapping[str, Any]) -> str:
    return cache_key(_CACHE_VERSION, model_fingerprint(model), source.fingerprint(), dict(config))


def _read_features(folder: Path, key: str) -> np.ndarray | None:
    """The features of cache entry ``key``, or None when it is absent or unreadable."""
    try:
        with np.load(folder / f"{key}.npz", allow_pickle=False) as stored:
            features: np.ndarray = stored["features"]
            return features
    except (OSError, ValueError, KeyError, EOFError):
        return None


def _write_index(path: Path, key: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".json.tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"key": key}, handle)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def cached_features(
    build: Callable[[], nn.Module],
    identity: Mapping[str, Any],
    images: Any,
    *,
    cache_dir: str | Path | None,
    use_cache: bool = True,
    batch_size: int = 64,
    progress: bool = True,
) -> np.ndarray:
    """:func:`extract_features` of ``images`` under the model ``build()`` returns, building it only on
    a cache miss.

    ``identity`` is a JSON-serialisable description of the model that needs no model to compute
    (architecture name, a hash of the weight file, library versions). A first call builds the model,
    extracts (or reads the entry :func:`extract_features` keys by the model's weights) and records
    ``cache_dir/vision-features/by-identity/<hash of identity and pixels>.json`` pointing at that
    entry; later calls with the same identity and pixels read the features without building anything.
    An entry that is missing or unreadable falls back to building the model. Without ``cache_dir``, or
    with ``use_cache=False``, this is ``extract_features(build(), images, ...)``.
    """
    source = as_image_source(images)
    if cache_dir is None or not use_cache:
        return extract_features(
            build(),
            source,
            batch_size=batch_size,
            progress=progress,
            cache_dir=cache_dir,
            use_cache=use_cache,
        )
    folder = Path(cache_dir).expanduser() / CACHE_NAMESPACE
    index = folder / _INDEX_FOLDER / f"{cache_key(_INDEX_VERSION, dict(identity), source.fingerprint())}.json"
    try:
        key = str(json.loads(index.read_text(encoding="utf-8"))["key"])
    except (OSError, ValueError, KeyError, TypeError):
        key = None
    features = None if key is None else _read_features(folder, key)
    if features is not None:
        return features
    model = build()
    features = extract_features(model, source, batch_size=batch_size, progress=progress, cache_dir=cache_dir)
    _write_index(index, _feature_key(model, source, data_config_of(model)))
    return features


def extract_embeddings(
    model: nn.Module,
    images: Any,
    *,
    labels: Any = None,
    ids: Sequence[Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    **options: Any,
) -> EmbeddingSet:
    """:func:`extract_features` wrapped as an :class:`EmbeddingSet` (labels, ids and provenance meta attached)."""
    vectors = extract_features(model, images, **options)
    info = {
        "domain": "vision",
        "encoder": getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__),
        "data_config": {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in (options.get("data_config") or data_config_of(model)).items()
        },
    }
    info.update(meta or {})
    return EmbeddingSet(
        vectors=vectors,
        ids=ids,
        labels=None if labels is None else np.asarray(labels),
        meta=info,
    )
