"""A timm backbone and a fitted SimSkip refiner as one ``nn.Module`` whose forward returns refined features.

Saved as a folder (never pickle)::

    config.json            timm model name, create_model kwargs, data config, dimensions
    backbone.safetensors   the backbone's state dict
    refiner/               the SimSkip model (SimSkip.save: config.json + model.safetensors)

:meth:`RefinedBackbone.load` rebuilds the backbone with ``timm.create_model(name, pretrained=False,
**create_kwargs)`` and loads the saved tensors strictly, so nothing is downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from simskip_core import __version__
from simskip_core.api import SimSkip
from simskip_core.errors import CorruptModelError
from simskip_core.serialization import atomic_folder
from simskip_vision._timm import import_timm, is_timm_model, model_name
from simskip_vision.weights import CheckpointMismatchError, check_state_dict

__all__ = ["RefinedBackbone"]

FORMAT = "simskip-vision-refined-backbone"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
BACKBONE_NAME = "backbone.safetensors"
REFINER_DIR = "refiner"


def _jsonable(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def _from_json(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}


class RefinedBackbone(nn.Module):
    """timm backbone + fitted SimSkip model: ``forward(images) -> refined pooled features``.

    Args:
        backbone: a timm model (any ``num_classes``: its pooled pre-logits features are refined).
        refiner: a fitted :class:`~simskip_core.api.SimSkip` whose input dimension is the backbone's
            ``num_features``. Its ``module_`` (the refiner, or in auto mode the selected map) is applied.
        name: timm architecture name used to rebuild the backbone on load (default: the backbone's
            ``pretrained_cfg["architecture"]``).
        create_kwargs: extra ``timm.create_model`` keyword arguments needed to rebuild the same
            architecture (default: ``{"num_classes": backbone.num_classes}``).
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
        self.backbone = backbone
        self.refiner = refiner.module_
        self.simskip = refiner
        self.model_name = name or model_name(backbone)
        self.create_kwargs = (
            dict(create_kwargs) if create_kwargs is not None else {"num_classes": backbone.num_classes}
        )
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
        """Write the folder ``path`` (config.json, backbone.safetensors, refiner/) atomically.

        Everything is written to a temporary sibling folder that is renamed into place when complete.
        An existing ``path`` is an error unless ``overwrite=True``.
        """
        with atomic_folder(path, overwrite=overwrite) as staging:
            config = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "simskip_version": __version__,
                "model_name": self.model_name,
                "create_kwargs": self.create_kwargs,
                "data_config": _jsonable(self.data_config),
                "num_features": int(self.backbone.num_features),
            }
            (staging / CONFIG_NAME).write_text(
                json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
            )
            tensors = {
                k: v.detach().cpu().clone().contiguous() for k, v in self.backbone.state_dict().items()
            }
            save_file(tensors, str(staging / BACKBONE_NAME))
            self.simskip.save(staging / REFINER_DIR)
        return Path(path).expanduser()

    @classmethod
    def load(cls, path: str | Path) -> RefinedBackbone:
        """Load a folder written by :meth:`save` (the backbone is rebuilt by its timm name; nothing downloads).

        Raises:
            FileNotFoundError: ``path`` does not exist.
            CorruptModelError: a file is missing, unreadable, or does not fit the named architecture.
        """
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"no saved RefinedBackbone at {folder}: the folder does not exist.")
        config_path, weights_path = folder / CONFIG_NAME, folder / BACKBONE_NAME
        for required in (config_path, weights_path, folder / REFINER_DIR):
            if not required.exists():
                raise CorruptModelError(
                    f"{folder} is not a complete RefinedBackbone: {required.name} is missing; save it again with .save()."
                )
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CorruptModelError(
                f"{config_path} is not valid JSON ({error}); the saved model is corrupt."
            ) from error
        if not isinstance(config, dict) or config.get("format") != FORMAT:
            raise CorruptModelError(
                f"{config_path} does not describe a RefinedBackbone (format {FORMAT!r} expected)."
            )
        if int(config.get("format_version", 0)) > FORMAT_VERSION:
            raise CorruptModelError(f"{folder} was saved by a newer simskip; upgrade simskip to load it.")
        timm = import_timm()
        name = config.get("model_name")
        if not isinstance(name, str) or not timm.is_model(name):
            raise CorruptModelError(
                f"{config_path} names timm model {name!r}, which this timm does not know."
            )
        backbone = timm.create_model(name, pretrained=False, **config.get("create_kwargs", {}))
        try:
            tensors = load_file(str(weights_path))
        except (SafetensorError, OSError, ValueError) as error:
            raise CorruptModelError(
                f"{weights_path} is not a readable safetensors file ({error})."
            ) from error
        try:
            check_state_dict(backbone, tensors, origin=str(weights_path))
            backbone.load_state_dict(tensors, strict=True)
        except (CheckpointMismatchError, RuntimeError) as error:
            raise CorruptModelError(
                f"{weights_path} does not fit timm {name!r} built with {config.get('create_kwargs')}: {error}"
            ) from error
        refiner = SimSkip.load(folder / REFINER_DIR)
        return cls(
            backbone.eval(),
            refiner,
            name=name,
            create_kwargs=config.get("create_kwargs", {}),
            data_config=_from_json(config["data_config"]),
        )

    def extra_repr(self) -> str:
        """Backbone name and the refined dimension."""
        return f"model_name={self.model_name!r}, simskip={self.simskip!r}"
