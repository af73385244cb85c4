"""Label-free criteria (simskip_core.criteria) against values computed by hand on small arrays."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from simskip_core import criteria
from simskip_core.api import DEFAULT_AUGMENT


def _entropy_rank(values: np.ndarray, eps: float = 1e-7) -> float:
    p = values / values.sum() + eps
    return float(np.exp(-np.sum(p * np.log(p))))


def test_rankme_of_a_diagonal_matrix_is_the_entropy_rank_of_its_diagonal() -> None:
    z = np.diag([3.0, 1.0])  # singular values 3 and 1: p = (0.75, 0.25)
    expected = np.exp(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25)))
    assert criteria.rankme(z) == pytest.approx(expected, rel=1e-5)
    assert criteria.rankme(np.eye(4)) == pytest.approx(4.0, rel=1e-5)


def test_rankme_is_scale_invariant_and_rotation_invariant() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 8)) * np.linspace(1, 5, 8)
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert criteria.rankme(7.5 * z) == pytest.approx(criteria.rankme(z), rel=1e-9)
    assert criteria.rankme(z @ q) == pytest.approx(criteria.rankme(z), rel=1e-9)


def _with_covariance_eigenvalues(eigenvalues: np.ndarray, seed: int = 0) -> np.ndarray:
    """Rows +-s_k e_k (rotated), whose sample covariance has exactly ``eigenvalues``."""
    d = len(eigenvalues)
    n = 2 * d
    scale = np.sqrt(eigenvalues * (n - 1) / 2.0)
    z = np.concatenate([np.diag(scale), -np.diag(scale)])
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return z @ q


def test_alpha_req_of_a_k_to_the_minus_2_spectrum_is_2() -> None:
    ranks = np.arange(1, 21, dtype=np.float64)
    z = _with_covariance_eigenvalues(ranks**-2.0)
    assert np.allclose(np.cov(z, rowvar=False), np.cov(z, rowvar=False).T)
    assert criteria.alpha_req(z) == pytest.approx(2.0, abs=1e-8)
    assert criteria.alpha_req(_with_covariance_eigenvalues(ranks**-1.0)) == pytest.approx(1.0, abs=1e-8)


def test_alpha_req_refuses_a_rank_one_matrix() -> None:
    z = np.outer(np.arange(5.0), [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="non-zero covariance eigenvalues"):
        criteria.alpha_req(z)


def test_uniformity_of_two_points() -> None:
    # orthogonal unit vectors: squared distance 2, so log exp(-2 * 2) = -4; antipodal: distance^2 4 -> -8
    assert criteria.uniformity(np.array([[1.0, 0.0], [0.0, 3.0]])) == pytest.approx(-4.0)
    assert criteria.uniformity(np.array([[2.0, 0.0], [-1.0, 0.0]])) == pytest.approx(-8.0)


def test_uniformity_averages_over_distinct_pairs_only() -> None:
    z = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # squared distances 2, 4, 2
    expected = np.log(np.mean(np.exp(-2.0 * np.array([2.0, 4.0, 2.0]))))
    assert criteria.uniformity(z) == pytest.approx(expected)


def test_alignment_is_zero_for_identical_views_and_hand_value_otherwise() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(size=(10, 4))
    assert criteria.alignment(z, z.copy()) == pytest.approx(0.0, abs=1e-12)
    assert criteria.alignment(z, 3.0 * z) == pytest.approx(0.0, abs=1e-12)  # on the unit sphere
    a = np.array([[1.0, 0.0], [1.0, 0.0]])
    b = np.array([[0.0, 2.0], [1.0, 0.0]])  # distances^2: 2 and 0
    assert criteria.alignment(a, b) == pytest.approx(1.0)


def _angles(degrees: list[float]) -> np.ndarray:
    rad = np.deg2rad(degrees)
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)


def test_knn_overlap_of_a_tiny_configuration() -> None:
    # k = 1. In a the nearest neighbours are 0<->1 and 2<->3; in b they are 0->1, 1->2, 2->1, 3->2.
    a = _angles([0, 10, 90, 100])
    b = _angles([0, 80, 90, 120])
    # Jaccard per row: {1}v{1}=1, {0}v{2}=0, {3}v{1}=0, {2}v{2}=1 -> mean 0.5
    assert criteria.knn_overlap(a, b, k=1) == pytest.approx(0.5)
    # k = 2, row 0: a {1, 2} vs b {1, 2} = 1; row 1: {0, 2} vs {2, 3} = 1/3; row 2: {3, 1} vs {1, 3} = 1;
    # row 3: {2, 1} vs {2, 1} = 1 -> mean 5/6
    assert criteria.knn_overlap(a, b, k=2) == pytest.approx((1 + 1 / 3 + 1 + 1) / 4)


def test_knn_preservation_is_one_for_the_identity_and_for_a_scaling() -> None:
    x = np.random.default_rng(2).normal(size=(30, 5))
    assert criteria.knn_preservation(x, x, k=5) == pytest.approx(1.0)
    assert criteria.knn_preservation(x, 4.0 * x, k=5) == pytest.approx(1.0)


def test_knn_bootstrap_stability_matches_a_brute_force_computation() -> None:
    z = np.random.default_rng(3).normal(size=(25, 3))
    k = 3
    members = criteria._bootstrap_members(len(z), seed=5)
    unit = z / np.linalg.norm(z, axis=1, keepdims=True)
    sim = unit @ unit.T
    scores = []
    for i in range(len(z)):
        sets = []
        for mask in members:
            candidates = [j for j in range(len(z)) if mask[j] and j != i]
            sets.append(set(sorted(candidates, key=lambda j: -sim[i, j])[:k]))
        scores.append(len(sets[0] & sets[1]) / len(sets[0] | sets[1]))
    assert criteria.knn_bootstrap_stability(z, k=k, seed=5) == pytest.approx(np.mean(scores))
    assert 0.0 <= np.mean(scores) <= 1.0


def test_lidar_matches_a_hand_computed_lda_rank() -> None:
    rng = np.random.default_rng(4)
    means = rng.normal(size=(6, 3)) * 2.0
    noise = rng.normal(size=(6, 3)) * 0.3
    a, b = means + noise, means - noise
    delta = criteria.LIDAR_DELTA
    class_means = (a + b) / 2
    grand = class_means.mean(axis=0)
    between = sum(np.outer(m - grand, m - grand) for m in class_means) / len(class_means)
    within = sum(np.outer(v - m, v - m) for m, va, vb in zip(class_means, a, b) for v in (va, vb)) / 12
    within = within + delta * np.eye(3)
    w, v = np.linalg.eigh(within)
    inv_sqrt = v @ np.diag(w**-0.5) @ v.T
    expected = _entropy_rank(np.clip(np.linalg.eigvalsh(inv_sqrt @ between @ inv_sqrt), 0, None))
    assert criteria.lidar(a, b) == pytest.approx(expected, rel=1e-6)


def test_criterion_scores_make_higher_better_for_every_criterion() -> None:
    scores = criteria.criterion_scores(
        {"rankme": 5.0, "alignment": 0.3, "uniformity": -2.0, "alpha_req": 1.5, "knn_preservation": 0.9}
    )
    assert scores == {
        "rankme": 5.0,
        "alignment": -0.3,
        "uniformity": 2.0,
        "alpha_req": -0.5,
        "knn_preservation": 0.9,
    }
    with pytest.raises(KeyError, match="unknown criterion"):
        criteria.criterion_scores({"accuracy": 1.0})


def test_map_criteria_of_the_identity_uses_the_refiners_views() -> None:
    x = np.random.default_rng(5).normal(size=(80, 6)).astype(np.float32)
    values = criteria.map_criteria(lambda a: a, x, DEFAULT_AUGMENT, fit_on=x, k=5)
    assert [c.name for c in criteria.CRITERIA] == list(values)
    assert values["knn_preservation"] == pytest.approx(1.0)
    view_a, view_b = criteria.make_views(x, DEFAULT_AUGMENT, fit_on=x)
    assert values["alignment"] == pytest.approx(criteria.alignment(view_a, view_b), rel=1e-5)
    assert values["alignment"] > 0
    # a scaling map changes no criterion (all of them are scale-invariant)
    scaled = criteria.map_criteria(lambda a: 3.0 * a, x, DEFAULT_AUGMENT, fit_on=x, k=5)
    for name, value in values.items():
        assert scaled[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name


def test_map_criteria_looks_at_a_bounded_seeded_sample() -> None:
    x = np.random.default_rng(6).normal(size=(300, 4))
    seen: list[int] = []

    def spy(rows: np.ndarray) -> np.ndarray:
        seen.append(len(rows))
        return rows

    criteria.map_criteria(spy, x, "noise", k=3, max_rows=40)
    assert seen == [40, 40, 40]
    assert np.array_equal(criteria.sample_rows(300, 40, seed=1), criteria.sample_rows(300, 40, seed=1))
    assert len(np.unique(criteria.sample_rows(300, 40))) == 40


def test_vector_criteria_without_inputs_has_no_preservation() -> None:
    z = np.random.default_rng(7).normal(size=(40, 5))
    values = criteria.vector_criteria(z, DEFAULT_AUGMENT, k=4)
    assert "knn_preservation" not in values
    assert set(values) == {c.name for c in criteria.CRITERIA} - {"knn_preservation"}


@pytest.mark.parametrize(
    ("z", "message"),
    [
        (np.array([1.0, 2.0, 3.0]), "2-D"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), "NaN or infinite"),
        (np.array([[1.0, 0.0]]), "at least 2"),
        (np.array([[0.0, 0.0], [0.0, 1.0]]), "all zeros"),
    ],
)
def test_bad_input_gets_a_clear_error(z: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        criteria.uniformity(z)


def test_bad_k_and_mismatched_views_get_clear_errors() -> None:
    z = np.random.default_rng(8).normal(size=(5, 3))
    with pytest.raises(ValueError, match="k must be in"):
        criteria.knn_overlap(z, z, k=5)
    with pytest.raises(ValueError, match="same shape"):
        criteria.alignment(z, z[:4])
    with pytest.raises(ValueError, match="same rows"):
        criteria.knn_preservation(z, z[:4], k=2)


def _benchmark_module() -> Any:
    """benchmarks/label_free_criteria.py as a module (benchmarks/ is no package)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "label_free_criteria.py"
    spec = importlib.util.spec_from_file_location("label_free_criteria", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def _candidate(bench: Any, name: str, **values: float) -> Any:
    base = {c.name: 0.0 for c in criteria.CRITERIA} | {"alpha_req": 1.0}
    return bench.Candidate(name, "x", "map", {"m": 0.0}, {}, base | values)


def test_auto_rules_of_the_benchmark_keep_identity_unless_beaten() -> None:
    bench = _benchmark_module()
    identity = _candidate(bench, "identity", rankme=5.0)
    worse = _candidate(bench, "worse", rankme=4.0)
    better = _candidate(bench, "better", rankme=6.0, alignment=0.5)  # better rank, worse alignment
    assert bench.pick([identity, worse], "rankme").name == "identity"
    assert bench.pick([identity, worse, better], "rankme").name == "better"
    assert bench.pick([identity, worse, better], "alignment").name == "identity"  # a tie is no win
    # the conservative rule needs every selector criterion to prefer the candidate
    assert bench.pick_conservative([identity, worse, better]).name == "identity"
    everywhere = {name: 1.0 for name in bench.SELECTORS} | {
        "alignment": -1.0,
        "uniformity": -1.0,
        "alpha_req": 1.0,
    }
    allbetter = _candidate(bench, "all", **everywhere)
    identity_all = _candidate(bench, "identity", rankme=0.0, alpha_req=0.5)
    assert bench.pick_conservative([identity_all, allbetter]).name == "all"
