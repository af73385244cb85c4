"""Feature extraction from timm models: image checks, timm's transform, batching, the on-disk cache, the hook."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from simskip_vision.extract import as_image_source, extract_features

from simskip_core.embeddings import EmbeddingSet
from simskip_core.plugins import get_plugin_manager


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    """timm's tiny test EfficientNet (random weights, 256-d pooled features, 160 x 160 input)."""
    torch.manual_seed(0)
    return timm.create_model("test_efficientnet", pretrained=False, num_classes=0).eval()


@pytest.fixture(scope="module")
def grey() -> np.ndarray:
    """Six random 28 x 28 grey images."""
    return np.random.default_rng(0).integers(0, 256, size=(6, 28, 28), dtype=np.uint8)


def test_features_follow_timms_transform_and_pooled_head(tiny, grey) -> None:
    feats = extract_features(tiny, grey, batch_size=4, progress=False)
    assert feats.shape == (6, tiny.num_features) and feats.dtype == np.float32
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(tiny))
    batch = torch.stack([transform(Image.fromarray(img).convert("RGB")) for img in grey])
    assert batch.shape[-2:] == (160, 160)
    with torch.inference_mode():
        expected = tiny(batch).numpy()
    np.testing.assert_allclose(feats, expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(feats[0], feats[1])


def test_grey_rgb_and_pil_inputs_agree(tiny, grey) -> None:
    base = extract_features(tiny, grey, progress=False)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    rgba = np.concatenate([rgb, np.full_like(grey[..., None], 7)], axis=-1)  # alpha is dropped
    variants = (rgb, rgba, grey[..., None], [Image.fromarray(img) for img in grey], torch.from_numpy(rgb))
    for variant in variants:
        np.testing.assert_allclose(
            extract_features(tiny, variant, progress=False), base, rtol=1e-5, atol=1e-6
        )


def test_model_with_classifier_gives_pooled_features_and_keeps_its_mode(grey) -> None:
    torch.manual_seed(0)
    headed = timm.create_model("test_efficientnet", pretrained=False, num_classes=7).train()
    torch.manual_seed(0)
    headless = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    headless.load_state_dict(
        {k: v for k, v in headed.state_dict().items() if not k.startswith("classifier.")}
    )
    feats = extract_features(headed, grey[:2], progress=False)
    assert feats.shape == (2, headed.num_features)
    np.testing.assert_allclose(
        feats, extract_features(headless, grey[:2], progress=False), rtol=1e-5, atol=1e-6
    )
    assert headed.training  # restored after extraction in eval mode


@pytest.mark.parametrize(
    ("images", "error", "message"),
    [
        (np.zeros((2, 28, 28), dtype=np.float32), TypeError, r"dtype float32; pass uint8.*\* 255"),
        (torch.zeros(2, 3, 28, 28), TypeError, "torch.float32 tensor"),
        (np.zeros((2, 3, 28, 28), dtype=np.uint8), ValueError, r"channel-first.*transpose\(0, 2, 3, 1\)"),
        (np.zeros((28, 28, 3), dtype=np.uint8), ValueError, r"one H×W×C image.*\[None\]"),
        (np.zeros((2, 28, 28, 5), dtype=np.uint8), ValueError, r"\(n, H, W\) for grey"),
        (np.zeros((2, 1, 28, 28, 3), dtype=np.uint8), ValueError, r"\(n, H, W, 3\) for RGB"),
        (np.zeros((0, 28, 28), dtype=np.uint8), ValueError, "empty"),
        ([], ValueError, "empty"),
        ([Image.new("L", (8, 8)), np.zeros((8, 8), dtype=np.uint8)], TypeError, r"images\[1\] is a ndarray"),
        (Image.new("RGB", (8, 8)), TypeError, "single PIL image"),
        ("cat.jpg", TypeError, "got str"),
    ],
)
def test_bad_images_are_rejected_with_the_fix(images, error, message) -> None:
    with pytest.raises(error, match=message):
        as_image_source(images)


def test_non_timm_model_and_bad_batch_size_are_rejected(grey) -> None:
    with pytest.raises(TypeError, match=r"not a timm model.*create_model"):
        extract_features(torch.nn.Linear(3, 3), grey, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        extract_features(timm.create_model("test_efficientnet", num_classes=0), grey, batch_size=0)


def test_cache_hit_skips_the_model_and_misses_on_new_pixels_or_weights(tmp_path, grey) -> None:
    torch.manual_seed(1)
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    calls = []
    model.conv_stem.register_forward_hook(lambda *_: calls.append(1))
    first = extract_features(model, grey, batch_size=3, progress=False, cache_dir=tmp_path)
    assert len(calls) == 2  # two batches
    files = list((tmp_path / "vision-features").glob("*.npz"))
    assert len(files) == 1
    second = extract_features(model, grey, batch_size=3, progress=False, cache_dir=tmp_path)
    assert len(calls) == 2 and np.array_equal(first, second)
    changed = grey.copy()
    changed[0, 0, 0] ^= 1
    extract_features(model, changed, batch_size=6, progress=False, cache_dir=tmp_path)
    assert len(calls) == 3
    with torch.no_grad():
        model.conv_head.weight.mul_(2)
    extract_features(model, grey, batch_size=6, progress=False, cache_dir=tmp_path)
    assert len(calls) == 4
    assert len(list((tmp_path / "vision-features").glob("*.npz"))) == 3
    extract_features(model, grey, batch_size=6, progress=False, cache_dir=tmp_path, use_cache=False)
    assert len(calls) == 5


def test_extract_hook_returns_labelled_embeddings_only_for_image_sources(tiny, grey) -> None:
    hook = get_plugin_manager().hook.simskip_extract_embeddings
    labels = np.arange(6) % 2
    result = hook(source={"images": grey, "model": tiny, "labels": labels}, options={"progress": False})
    assert isinstance(result, EmbeddingSet)
    assert result.vectors.shape == (6, tiny.num_features) and result.labels.tolist() == labels.tolist()
    assert result.meta["encoder"] == "test_efficientnet" and result.meta["domain"] == "vision"
    assert hook(source={"images": grey, "model": torch.nn.Linear(2, 2)}, options={}) is None
    assert hook(source=grey, options={}) is None


def test_cached_features_build_no_model_on_a_warm_cache(tmp_path, grey) -> None:
    from simskip_vision.extract import cached_features

    builds: list[int] = []

    def build() -> torch.nn.Module:
        builds.append(1)
        torch.manual_seed(0)
        return timm.create_model("test_efficientnet", pretrained=False, num_classes=0).eval()

    identity = {"encoder": "test_efficientnet", "weights": "seed-0"}
    first = cached_features(build, identity, grey, cache_dir=tmp_path, progress=False)
    assert len(builds) == 1
    np.testing.assert_array_equal(first, extract_features(build(), grey, progress=False))
    builds.clear()
    again = cached_features(build, identity, grey, cache_dir=tmp_path, progress=False)
    assert builds == [] and np.array_equal(again, first)  # warm: read without building the model
    cached_features(build, identity, grey[:3], cache_dir=tmp_path, progress=False)  # other pixels
    cached_features(build, {**identity, "weights": "other"}, grey, cache_dir=tmp_path, progress=False)
    cached_features(build, identity, grey, cache_dir=tmp_path, use_cache=False, progress=False)
    assert len(builds) == 3
    builds.clear()
    for entry in (tmp_path / "vision-features").glob("*.npz"):
        entry.write_bytes(b"not an npz")  # an unreadable entry: build and extract again
    again = cached_features(build, identity, grey, cache_dir=tmp_path, progress=False)
    assert builds == [1] and np.array_equal(again, first)
