"""RefinedBackbone: timm backbone + fitted SimSkip as one module; save/load; bad input; the attach hook."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import timm
import torch
from simskip_vision.extract import extract_features
from simskip_vision.wrapper import RefinedBackbone

from simskip_core.api import SimSkip
from simskip_core.errors import CorruptModelError
from simskip_core.plugins import get_plugin_manager
from simskip_core.serialization import read_model_dir, write_model_dir

FAST = {"epochs": 3, "batch_size": 32, "progress": False, "seed": 0}


@pytest.fixture(scope="module")
def parts() -> tuple[torch.nn.Module, SimSkip, np.ndarray]:
    """A tiny timm backbone, a SimSkip model fitted on its features of 120 images, and 4 held-out images."""
    torch.manual_seed(0)
    backbone = timm.create_model("test_efficientnet", pretrained=False, num_classes=0).eval()
    images = np.random.default_rng(0).integers(0, 256, size=(124, 32, 32, 3), dtype=np.uint8)
    config = {**timm.data.resolve_model_data_config(backbone), "input_size": (3, 64, 64), "crop_pct": 1.0}
    feats = extract_features(backbone, images[:120], progress=False, data_config=config)
    model = SimSkip(**FAST).fit(feats)
    return backbone, model, images[120:]


def _wrapped(parts) -> RefinedBackbone:
    backbone, model, _ = parts
    config = {**timm.data.resolve_model_data_config(backbone), "input_size": (3, 64, 64), "crop_pct": 1.0}
    return RefinedBackbone(backbone, model, data_config=config)


def test_forward_returns_the_refined_backbone_features(parts) -> None:
    backbone, model, images = parts
    wrapped = _wrapped(parts)
    out = wrapped.embed(images, progress=False)
    plain = extract_features(backbone, images, progress=False, data_config=wrapped.data_config)
    assert out.shape == plain.shape == (4, backbone.num_features)
    np.testing.assert_allclose(out, model.transform(plain), rtol=1e-5, atol=1e-5)
    assert not np.allclose(out, plain, atol=1e-4)  # the fitted refiner is not the identity
    x = torch.stack([wrapped.transform(__import__("PIL.Image").Image.fromarray(img)) for img in images])
    with torch.inference_mode():
        np.testing.assert_allclose(wrapped(x).numpy(), out, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(wrapped.features(x).numpy(), plain, rtol=1e-5, atol=1e-5)


def test_save_load_gives_identical_outputs_without_pickle(parts, tmp_path) -> None:
    _, _, images = parts
    wrapped = _wrapped(parts)
    wrapped.save(tmp_path / "m")
    names = sorted(p.name for p in (tmp_path / "m").rglob("*") if p.is_file())
    assert names == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert (config["format"], config["format_version"]) == ("simskip-refined-backbone", 1)
    loaded = RefinedBackbone.load(tmp_path / "m")
    assert loaded.model_name == "test_efficientnet" and loaded.data_config == wrapped.data_config
    assert np.array_equal(loaded.embed(images, progress=False), wrapped.embed(images, progress=False))
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(loaded(x), wrapped(x))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        wrapped.save(tmp_path / "m")
    wrapped.save(tmp_path / "m", overwrite=True)


def test_forward_rejects_bad_tensors_with_the_fix(parts) -> None:
    wrapped = _wrapped(parts)
    with pytest.raises(TypeError, match=r"torch.uint8 tensor.*\.embed\(images\)"):
        wrapped(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(n, 3, H, W\).*x\[None\]"):
        wrapped(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match=r"got \(1, 64, 64, 3\)"):
        wrapped(torch.zeros(1, 64, 64, 3))
    with pytest.raises(TypeError, match=r"got ndarray.*\.embed"):
        wrapped(np.zeros((1, 3, 64, 64), dtype=np.float32))


def test_refiner_for_other_features_or_unfitted_is_refused(parts) -> None:
    backbone, _, _ = parts
    other = SimSkip(**FAST).fit(np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32))
    with pytest.raises(ValueError, match=r"fitted on 8-d features.*256-d"):
        RefinedBackbone(backbone, other)
    with pytest.raises(ValueError, match="not fitted"):
        RefinedBackbone(backbone, SimSkip())
    with pytest.raises(TypeError, match="timm model"):
        RefinedBackbone(torch.nn.Linear(3, 3), other)


def test_load_reports_missing_or_mismatched_files(parts, tmp_path) -> None:
    wrapped = _wrapped(parts)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        RefinedBackbone.load(tmp_path / "absent")
    wrapped.save(tmp_path / "a")
    (tmp_path / "a" / "model.safetensors").unlink()
    with pytest.raises(CorruptModelError, match=r"model\.safetensors is missing"):
        RefinedBackbone.load(tmp_path / "a")
    wrapped.save(tmp_path / "b")
    config, tensors = read_model_dir(tmp_path / "b")
    other = {
        f"backbone.{k}": v for k, v in timm.create_model("test_resnet", num_classes=0).state_dict().items()
    }
    other.update({k: v for k, v in tensors.items() if k.startswith("simskip.")})
    write_model_dir(tmp_path / "b", config, other, overwrite=True)
    with pytest.raises(
        CorruptModelError, match=r"do not fit timm 'test_efficientnet'.*'conv_stem\.weight': missing"
    ):
        RefinedBackbone.load(tmp_path / "b")
    wrapped.save(tmp_path / "c")
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    config["model_name"] = "no_such_model"
    (tmp_path / "c" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CorruptModelError, match="no_such_model"):
        RefinedBackbone.load(tmp_path / "c")


def test_lite0_wrapper_round_trip(tmp_path) -> None:
    from simskip_vision.tasks import _backbone

    backbone = _backbone()  # the shared, cached create_backbone("efficientnet_lite0")
    feats = np.random.default_rng(1).normal(size=(160, backbone.num_features)).astype(np.float32)
    wrapped = RefinedBackbone(backbone, SimSkip(**FAST, hidden_dim=32, projector_dim=16).fit(feats))
    x = torch.randn(2, 3, 96, 96)
    wrapped.save(tmp_path / "lite0")
    loaded = RefinedBackbone.load(tmp_path / "lite0")
    with torch.inference_mode():
        assert torch.equal(loaded(x), wrapped(x))
    assert loaded.data_config["input_size"] == (3, 224, 224)


def test_attach_hook_wraps_timm_models_only(parts) -> None:
    backbone, model, _ = parts
    attach = get_plugin_manager().hook.simskip_attach
    wrapped = attach(host=backbone, model=model)
    assert isinstance(wrapped, RefinedBackbone) and wrapped.backbone is backbone
    assert attach(host=torch.nn.Linear(3, 3), model=model) is None
