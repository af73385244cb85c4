"""Label-free baselines and the random-residual control."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simskip_core.baselines import (
    PCA,
    AllButTheTop,
    CenterL2,
    Identity,
    RandomResidual,
    Whitening,
    baseline_resolver,
)


@pytest.fixture
def anisotropic() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.normal(size=(500, 6)) * np.array([10, 5, 2, 1, 0.5, 0.1]) + 3).astype(np.float32)


def test_identity_and_center_l2(anisotropic: np.ndarray) -> None:
    assert np.array_equal(Identity().fit_transform(anisotropic), anisotropic)
    out = CenterL2().fit_transform(anisotropic)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    centred = anisotropic - anisotropic.mean(0)
    np.testing.assert_allclose(out, centred / np.linalg.norm(centred, axis=1, keepdims=True), atol=1e-5)


@pytest.mark.parametrize("zca", [True, False])
def test_whitening_gives_unit_covariance(anisotropic: np.ndarray, zca: bool) -> None:
    out = Whitening(zca=zca).fit_transform(anisotropic)
    np.testing.assert_allclose(np.cov(out.T), np.eye(6), atol=1e-3)
    top = Whitening(k=2, zca=zca).fit_transform(anisotropic)
    assert top.shape == ((500, 6) if zca else (500, 2))
    spectrum = np.linalg.svd(np.atleast_2d(np.cov(top.T)), compute_uv=False)
    np.testing.assert_allclose(spectrum, [1, 1, 0, 0, 0, 0][: len(spectrum)], atol=1e-3)


def test_zca_and_pca_whitening_agree_on_distances(anisotropic: np.ndarray) -> None:
    zca = Whitening(zca=True).fit_transform(anisotropic)
    pca = Whitening(zca=False).fit_transform(anisotropic)
    np.testing.assert_allclose(np.linalg.norm(zca, axis=1), np.linalg.norm(pca, axis=1), rtol=1e-4)


def test_whitening_with_fewer_rows_than_dimensions_stays_bounded() -> None:
    rng = np.random.default_rng(1)
    train, new = rng.normal(size=(20, 64)).astype(np.float32), rng.normal(size=(5, 64)).astype(np.float32)
    model = Whitening().fit(train)
    out_train, out_new = model.transform(train), model.transform(new)
    # only the 19 spanned directions are scaled; a new vector's norm stays of the training rows' order
    assert np.linalg.norm(out_new, axis=1).max() < 10 * np.linalg.norm(out_train, axis=1).max()
    assert np.linalg.matrix_rank(out_train, tol=1e-3) == 19


def test_all_but_the_top_removes_dominant_direction(anisotropic: np.ndarray) -> None:
    out = AllButTheTop(n_components=1).fit_transform(anisotropic)
    np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-3)
    # the dominant axis (feature 0, std 10) is gone; the others are kept
    assert out[:, 0].std() < 0.1
    np.testing.assert_allclose(out[:, 1].std(), anisotropic[:, 1].std(), rtol=0.02)


def test_pca_matches_numpy(anisotropic: np.ndarray) -> None:
    out = PCA(k=3).fit_transform(anisotropic)
    centred = anisotropic - anisotropic.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    ref = centred @ vt[:3].T
    np.testing.assert_allclose(np.abs(out), np.abs(ref), rtol=1e-3, atol=1e-3)


def test_random_residual_moves_by_the_target(anisotropic: np.ndarray) -> None:
    control = RandomResidual(target_shift=0.7, seed=3).fit(anisotropic)
    moved = np.linalg.norm(control.transform(anisotropic) - anisotropic, axis=1).mean()
    assert moved == pytest.approx(0.7, rel=1e-3)
    other = RandomResidual(target_shift=0.7, seed=4).fit(anisotropic)
    assert not np.allclose(other.transform(anisotropic), control.transform(anisotropic))


def test_module_reproduces_transform(anisotropic: np.ndarray) -> None:
    for name in ["identity", "centerl2", "whitening", "abtt", "pca"]:
        baseline = baseline_resolver.make(name).fit(anisotropic)
        with torch.no_grad():
            via_module = baseline.module()(torch.from_numpy(anisotropic)).numpy()
        np.testing.assert_array_equal(via_module, baseline.transform(anisotropic))


def test_errors(anisotropic: np.ndarray) -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        Whitening().transform(anisotropic)
    with pytest.raises(ValueError, match="dimension 5"):
        Whitening().fit(anisotropic).transform(anisotropic[:, :5])
    with pytest.raises(ValueError):
        RandomResidual(target_shift=float("nan"))
