"""Embedding augmentations: masking rate, per-dimension noise scale, composition, seeding, resolver."""

from __future__ import annotations

import pytest
import torch

from simskip_core.augment import (
    Compose,
    FeatureMask,
    GaussianNoise,
    augmentation_resolver,
    build_augmentation,
)


def test_mask_zeroes_the_expected_share() -> None:
    x = torch.ones(2000, 50)
    out = FeatureMask(0.7)(x, torch.Generator().manual_seed(0))
    assert abs((out == 0).float().mean().item() - 0.3) < 0.01
    assert set(out.unique().tolist()) == {0.0, 1.0}


def test_noise_is_scaled_per_dimension() -> None:
    scales = torch.tensor([0.1, 1.0, 10.0])
    x = torch.randn(20000, 3) * scales
    noise = GaussianNoise(scale=0.5).fit(x)
    delta = noise(x, torch.Generator().manual_seed(1)) - x
    torch.testing.assert_close(delta.std(dim=0), 0.5 * scales, rtol=0.03, atol=0.0)


def test_unfitted_noise_raises() -> None:
    with pytest.raises(RuntimeError, match="fitted"):
        GaussianNoise()(torch.ones(2, 2), torch.Generator())


def test_same_seed_same_views_and_compose_order() -> None:
    x = torch.randn(64, 8)
    aug = build_augmentation([("mask", {"keep_prob": 0.5}), ("noise", {"scale": 0.2})]).fit(x)
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    c = aug(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert isinstance(aug, Compose)
    assert [type(t) for t in aug.augmentations] == [FeatureMask, GaussianNoise]
    # masking first, then noise: masked entries are no longer exactly zero
    assert (a == 0).float().mean() < 0.01


def test_resolver_and_config_roundtrip() -> None:
    assert isinstance(augmentation_resolver.make("mask"), FeatureMask)
    aug = build_augmentation(["mask", GaussianNoise(0.3)])
    rebuilt = build_augmentation([tuple(item) for item in aug.config()["augmentations"]])
    assert rebuilt.config() == aug.config()


@pytest.mark.parametrize(
    "bad", [lambda: FeatureMask(0.0), lambda: FeatureMask(1.5), lambda: GaussianNoise(-1)]
)
def test_bad_arguments(bad) -> None:
    with pytest.raises(ValueError):
        bad()
