"""A timm backbone and a fitted SimSkip refiner as one ``nn.Module`` whose forward returns refined features.

Saved as a simskip model folder (the core's format and atomic writer; never pickle)::

    config.json         format "simskip-refined-backbone", timm model name, create_model kwargs,
                        data config, dimensions, and the SimSkip model's configuration ("simskip")
    model.safetensors   the backbone's state dict ("backbone.*") and the SimSkip tensors ("simskip.*")

:meth:`RefinedBackbone.load` rebuilds the backbone with ``timm.create_model(name, pretrained=False,
**create_kwargs)``, where ``create_kwargs`` may only hold the keys in :data:`CREATE_KWARGS` (a
``checkpoint_path`` or ``pretrained_cfg_overlay`` in a tampered config would make timm read other
files), and loads the saved tensors strictly, so nothing is downloaded. Folders written by simskip
before this format (``backbone.safetensors`` + ``refiner/``) still load.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from simskip_core import __version__
from simskip_core.api import SimSkip
from simskip_core.errors import CorruptModelError
from simskip_core.serialization import CONFIG_NAME, read_model_dir, write_model_dir
from simskip_vision._timm import import_timm, is_timm_model, model_name
from simskip_vision.weights import CheckpointMismatchError, check_state_dict

__all__ = ["CREATE_KWARGS", "FORMAT", "FORMAT_VERSION", "RefinedBackbone"]

FORMAT = "simskip-refined-backbone"
FORMAT_VERSION = 1
#: The ``timm.create_model`` keyword arguments a saved RefinedBackbone may carry, with their types.
CREATE_KWARGS: dict[str, type | tuple[type, ...]] = {
    "num_classes": int,
    "in_chans": int,
    "global_pool": str,
    "drop_rate": (int, float),
    "drop_path_rate": (int, float),
}
LEGACY_FORMAT = "simskip-vision-refined-backbone"
LEGACY_BACKBONE = "backbone.safetensors"
LEGACY_REFINER = "refiner"


def _jsonable(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def _from_json(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}


def create_kwargs_problem(kwargs: Any) -> str | None:
    """What is wrong with ``kwargs`` as saved ``timm.create_model`` arguments, or None when they are fine."""
    if not isinstance(kwargs, Mapping):
        return f"create_kwargs must be a mapping, got {type(kwargs).__name__}"
    for key, value in kwargs.items():
        if key not in CREATE_KWARGS:
            return (
                f"create_kwargs key {key!r} is not one simskip writes (allowed: {', '.join(CREATE_KWARGS)})"
            )
        if isinstance(value, bool) or not isinstance(value, CREATE_KWARGS[key]):
            return f"create_kwargs[{key!r}] = {value!r} has the wrong type"
    return None


def _split(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def _check_format(config: Mapping[str, Any], folder: Path, expected: str) -> None:
    if config.get("format") != expected:
        raise CorruptModelError(
            f"{folder / CONFIG_NAME} does not describe a RefinedBackbone (format {expected!r} expected, "
            f"found {config.get('format')!r})."
        )
    version = config.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise CorruptModelError(
            f"{folder / CONFIG_NAME}: format_version must be an integer, got {version!r}."
        )
    if version > FORMAT_VERSION:
        raise CorruptModelError(f"{folder} was saved by a newer simskip; upgrade simskip to load it.")


def _read_current(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], SimSkip]:
    config, tensors = read_model_dir(folder)
    _check_format(config, folder, FORMAT)
    inner = config.get("simskip")
    if not isinstance(inner, dict):
        raise CorruptModelError(f"{folder / CONFIG_NAME} has no 'simskip' section; save the model again.")
    try:
        simskip = SimSkip.from_state(inner, _split(tensors, "simskip."), where=folder / CONFIG_NAME)
    except CorruptModelError as error:
        raise CorruptModelError(f"the SimSkip model saved in {folder} is inconsistent: {error}") from error
    return config, _split(tensors, "backbone."), simskip


def _read_legacy(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], SimSkip]:
    """A folder written before the core's format: config.json, backbone.safetensors, refiner/."""
    try:
        config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
        tensors = load_file(str(folder / LEGACY_BACKBONE))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, SafetensorError, ValueError) as error:
        raise CorruptModelError(
            f"{folder} holds an unreadable RefinedBackbone ({error}); save it again."
        ) from error
    if not isinstance(config, dict):
        raise CorruptModelError(f"{folder / CONFIG_NAME} must hold a JSON object; save the model again.")
    _check_format(config, folder, LEGACY_FORMAT)
    return config, tensors, SimSkip.load(folder / LEGACY_REFINER)


class RefinedBackbone(nn.Module):
    """timm backbone + fitted SimSkip model: ``forward(images) -> refined pooled features``.

    Args:
        backbone: a timm model (any ``num_classes``: its pooled pre-logits features are refined).
        refiner: a fitted :class:`~simskip_core.api.SimSkip` whose input dimension is the backbone's
            ``num_features``. Its ``module_`` (the refiner, or in auto mode the selected map) is applied.
        name: timm architecture name used to rebuild the backbone on load (default: the backbone's
            ``pretrained_cfg["architecture"]``).
        create_kwargs: extra ``timm.create_model`` keyword arguments needed to rebuild the same
            architecture (default: ``{"num_classes": backbone.num_classes}``); only the keys in
            :data:`CREATE_KWARGS` are accepted.
        data_config: the image preprocessing (default: ``timm.data.resolve_model_data_config(backbone)``).

    Input to :meth:`forward` is what timm's transform produces: float tensors (n, 3, H, W).
    :meth:`embed` takes raw images (uint8 arrays or PIL images) and runs the transform for you.
    """

    def __init__(
        self,
        backbone: nn.Module,
        refiner: SimSkip,
        *,
        name: str | None = None,
        create_kwargs: Mapping[str, Any] | None = None,
        data_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not is_timm_model(backbone):
            raise TypeError(
                f"backbone must be a timm model (timm.create_model(...) or simskip_vision.create_backbone(...)), "
                f"got {type(backbone).__name__}."
            )
        if not isinstance(refiner, SimSkip):
            raise TypeError(
                f"refiner must be a fitted simskip_core.api.SimSkip, got {type(refiner).__name__}."
            )
        if refiner.module_ is None or refiner.dim_ is None:
            raise ValueError("the SimSkip model is not fitted; call refiner.fit(features) first.")
        num_features = int(getattr(backbone, "num_features", -1))
        if refiner.dim_ != num_features:
            raise ValueError(
                f"the SimSkip model was fitted on {refiner.dim_}-d features but {type(backbone).__name__} produces "
                f"{num_features}-d pooled features; fit it on this backbone's features (simskip_vision.extract_features)."
            )
        timm = import_timm()
        self.backbone: Any = backbone  # a timm model: forward_head, num_features
        self.refiner = refiner.module_
        self.simskip = refiner
        self.model_name = name or model_name(backbone)
        kwargs = create_kwargs if create_kwargs is not None else {"num_classes": backbone.num_classes}
        problem = create_kwargs_problem(kwargs)
        if problem is not None:
            raise ValueError(f"{problem}; build the backbone with timm and pass only those arguments.")
        self.create_kwargs = dict(kwargs)
        self.data_config = (
            dict(data_config)
            if data_config is not None
            else dict(timm.data.resolve_model_data_config(backbone))
        )
        self.in_chans = int(self.data_config.get("input_size", (3,))[0])
        self.eval()

    # ------------------------------------------------------------------ forward
    def _check_input(self, x: Any) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"RefinedBackbone.forward takes a float tensor (n, {self.in_chans}, H, W), got {type(x).__name__}; "
                "for raw images (uint8 arrays, PIL images) use .embed(images)."
            )
        if not x.is_floating_point():
            raise TypeError(
                f"RefinedBackbone.forward got a {x.dtype} tensor; it expects normalised float images. "
                "Apply .transform (timm's create_transform) to each image, or use .embed(images) for raw pixels."
            )
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            hint = "add a batch axis with x[None]" if x.ndim == 3 else "pass (n, C, H, W), channels first"
            raise ValueError(
                f"RefinedBackbone.forward expects shape (n, {self.in_chans}, H, W), got {tuple(x.shape)}; {hint}."
            )
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's pooled features (before refinement), (n, num_features)."""
        x = self._check_input(x)
        return self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Refined features of a batch of transformed images: (n, C, H, W) -> (n, d)."""
        return self.refiner(self.features(x))

    def embed_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`forward`; the hook :func:`~simskip_vision.extract.extract_features` calls."""
        return self(x)

    @property
    def transform(self) -> Callable[[Any], torch.Tensor]:
        """timm's evaluation transform for this backbone (PIL image -> normalised tensor)."""
        return import_timm().data.create_transform(**self.data_config, is_training=False)

    def embed(self, images: Any, **options: Any) -> np.ndarray:
        """Refined features of raw images (uint8 (n, H, W[, 3]) or PIL list); options as in ``extract_features``."""
        from simskip_vision.extract import extract_features

        return extract_features(self, images, **options)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the model folder ``path`` (config.json + model.safetensors) with the core's atomic writer.

        An existing ``path`` is an error unless ``overwrite=True`` (see
        :func:`simskip_core.serialization.write_model_dir`).
        """
        simskip_config, simskip_tensors = self.simskip.to_state()
        config = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "simskip_version": __version__,
            "model_name": self.model_name,
            "create_kwargs": self.create_kwargs,
            "data_config": _jsonable(self.data_config),
            "num_features": int(self.backbone.num_features),
            "simskip": simskip_config,
        }
        tensors = {f"backbone.{k}": v.detach().cpu().clone() for k, v in self.backbone.state_dict().items()}
        tensors.update({f"simskip.{k}": v for k, v in simskip_tensors.items()})
        return write_model_dir(path, config, tensors, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path) -> RefinedBackbone:
        """Load a folder written by :meth:`save` (the backbone is rebuilt by its timm name; nothing downloads).

        Raises:
            FileNotFoundError: ``path`` does not exist.
            CorruptModelError: a file is missing or unreadable, a config key is wrong (the message
                names it), or the weights do not fit the named architecture.
        """
        folder = Path(path).expanduser()
        legacy = (folder / LEGACY_BACKBONE).is_file() and not (folder / "model.safetensors").exists()
        config, tensors, simskip = (_read_legacy if legacy else _read_current)(folder)
        timm = import_timm()
        name = config.get("model_name")
        if not isinstance(name, str) or not timm.is_model(name):
            raise CorruptModelError(
                f"{folder / CONFIG_NAME} names timm model {name!r}, which this timm does not know."
            )
        create_kwargs = config.get("create_kwargs", {})
        problem = create_kwargs_problem(create_kwargs)
        if problem is not None:
            raise CorruptModelError(
                f"{folder / CONFIG_NAME}: {problem}; the file was edited, save the model again."
            )
        data_config = config.get("data_config")
        if not isinstance(data_config, dict):
            raise CorruptModelError(
                f"{folder / CONFIG_NAME} has no 'data_config' object; save the model again."
            )
        backbone = timm.create_model(name, pretrained=False, **create_kwargs)
        try:
            check_state_dict(backbone, tensors, origin=str(folder))
            backbone.load_state_dict(tensors, strict=True)
        except (CheckpointMismatchError, RuntimeError) as error:
            raise CorruptModelError(
                f"the weights in {folder} do not fit timm {name!r} built with {create_kwargs}: {error}"
            ) from error
        return cls(
            backbone.eval(),
            simskip,
            name=name,
            create_kwargs=create_kwargs,
            data_config=_from_json(data_config),
        )

    def extra_repr(self) -> str:
        """Backbone name and the refined dimension."""
        return f"model_name={self.model_name!r}, simskip={self.simskip!r}"
