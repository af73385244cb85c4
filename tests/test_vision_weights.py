"""Offline pretrained weights: EfficientNet-Lite0 key mapping, local checkpoints, a real ImageNet prediction."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from simskip_vision import tasks as vision_tasks
from simskip_vision.weights import (
    CheckpointMismatchError,
    create_backbone,
    efficientnet_lite0_weights_path,
    efficientnet_pytorch_to_timm,
)
from skimage import data

from simskip_core.errors import MissingDataError

# ImageNet-1k classes 281-285: tabby, tiger cat, Persian, Siamese, Egyptian cat.
CAT_CLASSES = range(281, 286)


@pytest.fixture(scope="module")
def package_state() -> dict[str, torch.Tensor]:
    """The shipped efficientnet_pytorch-named state dict."""
    return torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def lite0_empty() -> torch.nn.Module:
    """timm efficientnet_lite0 with its ImageNet classifier, random weights."""
    return timm.create_model("efficientnet_lite0", pretrained=False)


@pytest.mark.slow
def test_pretrained_lite0_classifies_chelsea_as_a_cat() -> None:
    model = create_backbone("efficientnet_lite0", num_classes=1000)
    config = timm.data.resolve_model_data_config(model)
    x = timm.data.create_transform(**config)(Image.fromarray(data.chelsea()))[None]
    with torch.inference_mode():
        probs = model(x).softmax(-1)[0]
    top = probs.topk(3)
    assert int(top.indices[0]) in CAT_CLASSES, top
    assert float(probs[list(CAT_CLASSES)].sum()) > 0.8
    # The feature extractor (num_classes=0) gives exactly the classifier's pooled pre-logits.
    headless = vision_tasks._backbone()  # the shared, cached create_backbone("efficientnet_lite0")
    with torch.inference_mode():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        assert torch.equal(headless(x), pooled)
    assert headless.num_classes == 0 and not headless.training
    assert model.pretrained_cfg["file"] == str(efficientnet_lite0_weights_path())  # provenance is recorded


def test_mapping_renames_every_tensor_by_rule(package_state, lite0_empty) -> None:
    mapped = efficientnet_pytorch_to_timm(package_state, lite0_empty)
    target = lite0_empty.state_dict()
    assert set(mapped) == set(target)
    # The rule-based names land where the two state dicts' orders say they should.
    for (src_key, src), (dst_key, _) in zip(package_state.items(), target.items()):
        assert mapped[dst_key] is src, (src_key, dst_key)
    assert mapped["blocks.0.0.conv_pw.weight"] is package_state["_blocks.0._project_conv.weight"]
    assert mapped["blocks.2.0.conv_pwl.weight"] is package_state["_blocks.3._project_conv.weight"]


def test_mapping_drops_the_classifier_for_a_feature_extractor(package_state) -> None:
    headless = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)
    mapped = efficientnet_pytorch_to_timm(package_state, headless)
    assert not any(key.startswith("classifier.") for key in mapped)
    assert set(mapped) == set(headless.state_dict())


def test_mapping_names_a_shape_mismatch(package_state, lite0_empty) -> None:
    broken = dict(package_state)
    broken["_blocks.5._depthwise_conv.weight"] = torch.zeros(7, 1, 3, 3)
    with pytest.raises(
        CheckpointMismatchError,
        match=r"1 problem.*_blocks\.5\._depthwise_conv\.weight' -> 'blocks\.3\.0\.conv_dw\.weight': shape \(7, 1, 3, 3\)",
    ):
        efficientnet_pytorch_to_timm(broken, lite0_empty)


def test_mapping_names_missing_and_unknown_keys(package_state, lite0_empty) -> None:
    missing = {k: v for k, v in package_state.items() if k != "_bn1.running_var"}
    with pytest.raises(CheckpointMismatchError, match=r"'bn2\.running_var'.*receives nothing"):
        efficientnet_pytorch_to_timm(missing, lite0_empty)
    extra = dict(package_state, **{"_blocks.99._bn0.weight": torch.zeros(3)})
    with pytest.raises(CheckpointMismatchError, match=r"_blocks\.99\._bn0\.weight.*block 99 does not exist"):
        efficientnet_pytorch_to_timm(extra, lite0_empty)
    odd = dict(package_state, **{"_swish.weight": torch.zeros(3)})
    with pytest.raises(CheckpointMismatchError, match=r"_swish\.weight"):
        efficientnet_pytorch_to_timm(odd, lite0_empty)


def test_lite0_weights_into_another_architecture_are_refused(package_state) -> None:
    b0 = timm.create_model("efficientnet_b0", pretrained=False)  # has squeeze-excitation and other widths
    with pytest.raises(CheckpointMismatchError, match=r"efficientnet_b0.*another architecture") as info:
        efficientnet_pytorch_to_timm(package_state, b0)
    assert "se.conv_reduce" in str(info.value)
    resnet = timm.create_model("test_resnet", pretrained=False)
    with pytest.raises(CheckpointMismatchError, match="EfficientNet"):
        efficientnet_pytorch_to_timm(package_state, resnet)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_checkpoint_loads_through_timm_overlay(tmp_path, suffix) -> None:
    torch.manual_seed(3)
    source = timm.create_model("test_efficientnet", pretrained=False)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)  # a wrapped checkpoint, unwrapped by timm
    model = create_backbone("test_efficientnet", checkpoint=path)
    assert model.pretrained_cfg["file"] == str(path)
    loaded = model.state_dict()
    for key, tensor in state.items():
        if not key.startswith("classifier."):
            assert torch.equal(loaded[key], tensor), key
    with_head = create_backbone("test_efficientnet", checkpoint=path, num_classes=source.num_classes)
    assert torch.equal(with_head.state_dict()["classifier.weight"], state["classifier.weight"])


def test_checkpoint_of_another_architecture_is_refused(tmp_path) -> None:
    path = tmp_path / "resnet.safetensors"
    save_file(dict(timm.create_model("test_resnet", pretrained=False).state_dict()), str(path))
    with pytest.raises(
        CheckpointMismatchError,
        match=r"test_efficientnet': 1 of 86 tensors match.*missing from the checkpoint.*another architecture",
    ):
        create_backbone("test_efficientnet", checkpoint=path)
    narrow = tmp_path / "narrow.safetensors"
    state = dict(timm.create_model("test_efficientnet", pretrained=False).state_dict())
    state["conv_head.weight"] = torch.zeros(5, 5, 1, 1)
    save_file(state, str(narrow))
    with pytest.raises(CheckpointMismatchError, match=r"'conv_head\.weight': shape \(5, 5, 1, 1\)"):
        create_backbone("test_efficientnet", checkpoint=narrow)


def test_bad_names_and_files_give_clear_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="timm has no model named 'efficientnet_lite99'"):
        create_backbone("efficientnet_lite99")
    with pytest.raises(ValueError, match=r"no offline pretrained weights ship for 'resnet50'.*checkpoint="):
        create_backbone("resnet50")
    with pytest.raises(MissingDataError, match="does not exist"):
        create_backbone("test_efficientnet", checkpoint=tmp_path / "absent.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointMismatchError, match="not a readable checkpoint"):
        create_backbone("test_efficientnet", checkpoint=garbage)
