"""The skip refiner: identity at initialisation, architecture options, argument checks."""

from __future__ import annotations

import pytest
import torch

from simskip_core.refiner import SkipRefiner, build_mlp


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("norm", ["none", "layer", "batch"])
def test_untrained_refiner_is_exactly_identity(depth: int, norm: str) -> None:
    refiner = SkipRefiner(32, depth=depth, norm=norm, dropout=0.1).eval()
    x = torch.randn(50, 32)
    assert torch.equal(refiner(x), x)


def test_projector_is_separate_and_shapes() -> None:
    refiner = SkipRefiner(24, hidden_dim=40, projector_dim=8)
    h = refiner(torch.randn(5, 24))
    assert refiner.project(h).shape == (5, 8)
    assert not any(p is q for p in refiner.g.parameters() for q in refiner.projector.parameters())


def test_normalize_output_and_residual_scale() -> None:
    refiner = SkipRefiner(8, normalize_output=True)
    torch.nn.init.normal_(refiner.g[-1].weight)
    x = torch.randn(10, 8) * 5
    out = refiner(x)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(10))
    plain = SkipRefiner(8)
    plain.load_state_dict(refiner.state_dict())
    plain.residual_scale = 0.25
    torch.testing.assert_close(plain(x), x + 0.25 * plain.residual(x))


def test_config_rebuilds_the_architecture() -> None:
    refiner = SkipRefiner(12, hidden_dim=7, depth=3, activation="gelu", norm="layer", projector_dim=5)
    clone = SkipRefiner(**refiner.config())
    clone.load_state_dict(refiner.state_dict())
    assert clone.config() == refiner.config()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"depth": 0}, "depth"),
        ({"activation": "swish2"}, "activation"),
        ({"norm": "group"}, "norm"),
        ({"dropout": 1.0}, "dropout"),
        ({"projector_dim": 0}, "projector_dim"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SkipRefiner(8, **kwargs)


def test_build_mlp_layer_count() -> None:
    mlp = build_mlp(4, 6, 3, depth=3, activation="tanh")
    linears = [m for m in mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(4, 6), (6, 6), (6, 3)]
