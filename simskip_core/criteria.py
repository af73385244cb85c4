"""Label-free criteria: score an embedding matrix from the embeddings alone, on held-out rows.

Each criterion is a small function of a bounded sample of rows (at most :data:`MAX_ROWS`, drawn with a
seed by :func:`sample_rows`), so its cost does not grow with the number of rows. Each docstring says
where the criterion comes from and which direction is better; :data:`CRITERIA` records the direction,
and :func:`criterion_scores` turns raw values into scores where higher is better for every criterion.

Criteria that compare two augmented views of the same rows need the candidate as a *map*
(:func:`map_criteria`): the augmentations are applied to the input rows and both views are pushed
through the map, the positive pairs the refiner itself trains on. For plain vectors without a map,
:func:`vector_criteria` augments the vectors directly.

Neighbourhoods use cosine similarity throughout (the k nearest other rows by cosine).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from simskip_core.augment import Augmentation, build_augmentation

__all__ = [
    "CRITERIA",
    "MAX_ROWS",
    "Criterion",
    "alignment",
    "alpha_req",
    "compute_criteria",
    "criterion_scores",
    "knn_bootstrap_stability",
    "knn_overlap",
    "knn_preservation",
    "lidar",
    "make_views",
    "map_criteria",
    "rankme",
    "sample_rows",
    "uniformity",
    "vector_criteria",
]

#: The most rows any criterion looks at (a seeded sample when there are more).
MAX_ROWS = 2000
#: RankMe's epsilon (Garrido et al. 2023, Eq. 1).
RANKME_EPS = 1e-7
#: LiDAR's ridge on the within-class covariance (Thilak et al. 2023).
LIDAR_DELTA = 1e-4
#: Eigenvalues below this fraction of the largest count as zero in the alpha-ReQ fit.
ALPHA_REL_TOL = 1e-10


@dataclass(frozen=True)
class Criterion:
    """A label-free criterion's name and direction.

    Attributes:
        name: the key in the dicts :func:`compute_criteria` returns.
        better: "higher", "lower", or "near1" (best at 1: alpha-ReQ).
        needs_views: True when it compares augmented views of the same rows.
        source: the paper it comes from.
    """

    name: str
    better: str
    needs_views: bool
    source: str


#: Every criterion :func:`compute_criteria` reports, in order.
CRITERIA: tuple[Criterion, ...] = (
    Criterion("rankme", "higher", False, "Garrido et al. 2023, RankMe, arXiv 2210.02885"),
    Criterion("alpha_req", "near1", False, "Agrawal et al. 2022, alpha-ReQ, NeurIPS 2022"),
    Criterion("alignment", "lower", True, "Wang & Isola 2020, arXiv 2005.10242"),
    Criterion("uniformity", "lower", False, "Wang & Isola 2020, arXiv 2005.10242"),
    Criterion("knn_stability", "higher", True, "k-NN overlap between two augmented views"),
    Criterion("knn_bootstrap", "higher", False, "k-NN overlap between two bootstrap resamples"),
    Criterion("knn_preservation", "higher", False, "k-NN overlap before and after the map"),
    Criterion("lidar", "higher", True, "Thilak et al. 2024, LiDAR, arXiv 2312.04000"),
)


def _matrix(z: Any, name: str = "z", min_rows: int = 2) -> np.ndarray:
    arr = np.asarray(z, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (rows, dim) matrix, got shape {arr.shape}; reshape it.")
    if arr.shape[0] < min_rows:
        raise ValueError(f"{name} has {arr.shape[0]} rows; a criterion needs at least {min_rows}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values; drop or repair those rows first.")
    return arr


def sample_rows(n: int, max_rows: int = MAX_ROWS, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``max_rows`` of ``n`` rows, drawn without replacement with ``seed``."""
    if n < 1 or max_rows < 1:
        raise ValueError(f"need n >= 1 and max_rows >= 1, got n={n}, max_rows={max_rows}.")
    if n <= max_rows:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, 4099]).choice(n, size=max_rows, replace=False))


def _entropy_rank(values: np.ndarray, eps: float) -> float:
    """exp of the Shannon entropy of ``values / sum(values) + eps`` (the RankMe form)."""
    p = values / max(float(values.sum()), np.finfo(np.float64).tiny) + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def rankme(z: np.ndarray, eps: float = RANKME_EPS) -> float:
    """RankMe, the effective rank of an embedding matrix; higher is better.

    Garrido, Balestriero, Najman & LeCun, "RankMe: Assessing the downstream performance of pretrained
    self-supervised representations by their rank", ICML 2023, arXiv 2210.02885: with the singular
    values sigma_k of the (uncentred) matrix, p_k = sigma_k / ||sigma||_1 + eps and
    RankMe = exp(-sum_k p_k log p_k), eps = 1e-7. It lies in [1, min(n, d)] and is scale-invariant.
    """
    sigma = np.linalg.svd(_matrix(z), compute_uv=False)
    return _entropy_rank(sigma, eps)


def _covariance_eigenvalues(z: np.ndarray) -> np.ndarray:
    """Eigenvalues of the sample covariance of ``z``, largest first."""
    centred = z - z.mean(axis=0)
    sigma = np.linalg.svd(centred, compute_uv=False)
    return np.sort(sigma**2 / max(z.shape[0] - 1, 1))[::-1]


def alpha_req(z: np.ndarray) -> float:
    """alpha-ReQ, the power-law decay coefficient of the covariance eigenspectrum; best near 1.

    Agrawal, Mondal, Ghosh & Richards, "alpha-ReQ: Assessing Representation Quality in Self-Supervised
    Learning by measuring eigenspectrum decay", NeurIPS 2022: the eigenvalues lambda_k of the
    embeddings' covariance follow lambda_k ~ k^(-alpha); alpha is minus the least-squares slope of
    log lambda_k against log k. The fit uses every rank k = 1..r whose eigenvalue is numerically
    non-zero (above 1e-10 of the largest; r <= min(n - 1, d)). The paper finds downstream accuracy
    best for alpha near 1 (flatter: noise spread over many directions; steeper: collapse), so the
    score of :func:`criterion_scores` is -|alpha - 1|.
    """
    eig = _covariance_eigenvalues(_matrix(z, min_rows=3))
    eig = eig[eig > eig[0] * ALPHA_REL_TOL] if eig[0] > 0 else eig[:0]
    if eig.size < 2:
        raise ValueError(
            "alpha-ReQ needs at least two non-zero covariance eigenvalues; z is (nearly) rank 1."
        )
    ranks = np.log(np.arange(1, eig.size + 1, dtype=np.float64))
    slope = np.polyfit(ranks, np.log(eig), 1)[0]
    return float(-slope)


def _normalise(z: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError("a row is all zeros, so it has no direction; drop zero rows before scoring.")
    return z / norms


def alignment(view_a: np.ndarray, view_b: np.ndarray, alpha: float = 2.0) -> float:
    """Alignment of positive pairs, E ||f(x) - f(x+)||_2^alpha on L2-normalised vectors; lower is better.

    Wang & Isola, "Understanding Contrastive Representation Learning through Alignment and Uniformity
    on the Hypersphere", ICML 2020, arXiv 2005.10242 (alpha = 2). Row i of ``view_a`` and of ``view_b``
    are the two views of one item. 0 for identical views.
    """
    a, b = _matrix(view_a, "view_a", 1), _matrix(view_b, "view_b", 1)
    if a.shape != b.shape:
        raise ValueError(f"the two views must have the same shape, got {a.shape} and {b.shape}.")
    return float((np.linalg.norm(_normalise(a) - _normalise(b), axis=1) ** alpha).mean())


def uniformity(z: np.ndarray, t: float = 2.0) -> float:
    """Uniformity, log E_{x != y} exp(-t ||f(x) - f(y)||^2) on L2-normalised vectors; lower is better.

    Wang & Isola 2020, arXiv 2005.10242 (t = 2), over all pairs of distinct rows.
    """
    u = _normalise(_matrix(z))
    sq = np.clip(2.0 - 2.0 * (u @ u.T), 0.0, 4.0)  # squared distances of unit vectors
    upper = sq[np.triu_indices(u.shape[0], k=1)]
    return float(np.log(np.mean(np.exp(-t * upper))))


def _knn_sets(z: np.ndarray, k: int, allowed: np.ndarray | None = None) -> np.ndarray:
    """(n, k) indices of each row's k most cosine-similar other rows (only ``allowed`` rows when given)."""
    u = _normalise(z)
    sim = u @ u.T
    np.fill_diagonal(sim, -np.inf)
    if allowed is not None:
        sim[:, ~allowed] = -np.inf
    return np.argpartition(-sim, k - 1, axis=1)[:, :k]


def _check_k(n: int, k: int, available: int | None = None) -> None:
    limit = (n if available is None else available) - 1
    if not 1 <= k <= limit:
        raise ValueError(f"k must be in [1, {limit}] for {n} rows, got {k}; pass a smaller k.")


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over rows of |A_i ∩ B_i| / |A_i ∪ B_i| for index sets given as (n, k) arrays."""
    scores = []
    for row_a, row_b in zip(a, b):
        sa, sb = set(row_a.tolist()), set(row_b.tolist())
        scores.append(len(sa & sb) / len(sa | sb))
    return float(np.mean(scores))


def knn_overlap(z_a: np.ndarray, z_b: np.ndarray, k: int = 10) -> float:
    """Mean Jaccard overlap of each row's k-NN set in ``z_a`` and in ``z_b`` (same rows, any dims).

    The building block of :func:`knn_preservation` and of the view stability in :func:`compute_criteria`.
    """
    a, b = _matrix(z_a, "z_a"), _matrix(z_b, "z_b")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"both matrices must have the same rows, got {a.shape[0]} and {b.shape[0]}.")
    _check_k(a.shape[0], k)
    return _jaccard(_knn_sets(a, k), _knn_sets(b, k))


def knn_preservation(inputs: np.ndarray, outputs: np.ndarray, k: int = 10) -> float:
    """Neighbourhood preservation, the k-NN overlap of the rows before and after the map; higher is better.

    A "do no harm" criterion in the spirit of the trustworthiness and continuity of Venna & Kaski
    (ICANN 2001) and of the k-NN preservation used to assess dimensionality reduction (Lee & Verleysen
    2009): 1 for the identity and for any map that keeps each row's cosine neighbours. Its maximum is
    the identity by construction, so it can guard a choice but cannot pick a better candidate.
    """
    return knn_overlap(inputs, outputs, k)


def _bootstrap_members(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two (n,) boolean masks: the rows drawn at least once by each of two bootstrap resamples."""
    rng = np.random.default_rng([seed, 104729])
    first, second = (np.isin(np.arange(n), rng.integers(0, n, size=n)) for _ in range(2))
    return first, second


def knn_bootstrap_stability(z: np.ndarray, k: int = 10, seed: int = 0) -> float:
    """Neighbourhood stability under resampling; higher is better.

    Two bootstrap resamples of the rows are drawn; each row's k nearest other rows are found among the
    distinct rows of each resample, and the two sets are compared by Jaccard overlap (mean over rows).
    A resampling-stability measure in the spirit of clustering stability (Ben-Hur, Elisseeff & Guyon,
    PSB 2002), applied to k-NN graphs.
    """
    arr = _matrix(z)
    n = arr.shape[0]
    members = _bootstrap_members(n, seed)
    _check_k(n, k, min(int(m.sum()) for m in members))
    return _jaccard(_knn_sets(arr, k, members[0]), _knn_sets(arr, k, members[1]))


def lidar(
    view_a: np.ndarray, view_b: np.ndarray, delta: float = LIDAR_DELTA, eps: float = RANKME_EPS
) -> float:
    """LiDAR, the effective rank of the LDA matrix of the surrogate task "which item is this view of"; higher is better.

    Thilak, Huang, Saremi, Dinh, Goh, Susskind & Littwin, "LiDAR: Sensing Linear Probing Performance in
    Joint Embedding SSL Architectures", ICLR 2024, arXiv 2312.04000. Each row is a class whose samples
    are its views: with class means mu_i, the between-class covariance S_b, the within-class covariance
    S_w + delta I, and L = S_w^(-1/2) S_b S_w^(-1/2), LiDAR is the RankMe form (exp of the entropy of
    the normalised eigenvalues, plus eps) of L's eigenvalues. Two views per row here (the paper uses more).
    """
    a, b = _matrix(view_a, "view_a"), _matrix(view_b, "view_b")
    if a.shape != b.shape:
        raise ValueError(f"the two views must have the same shape, got {a.shape} and {b.shape}.")
    means = (a + b) / 2.0
    between = np.cov(means, rowvar=False, bias=True).reshape(a.shape[1], a.shape[1])
    within_rows = np.concatenate([a - means, b - means])
    within = within_rows.T @ within_rows / within_rows.shape[0] + delta * np.eye(a.shape[1])
    eigval, eigvec = np.linalg.eigh(within)
    inv_sqrt = (eigvec / np.sqrt(np.clip(eigval, delta, None))) @ eigvec.T
    lda = np.linalg.eigvalsh(inv_sqrt @ between @ inv_sqrt)
    return _entropy_rank(np.clip(lda, 0.0, None), eps)


def compute_criteria(
    outputs: np.ndarray,
    *,
    inputs: np.ndarray | None = None,
    view_a: np.ndarray | None = None,
    view_b: np.ndarray | None = None,
    k: int = 10,
    seed: int = 0,
) -> dict[str, float]:
    """Every criterion of :data:`CRITERIA` that the given arrays allow, as raw values.

    Args:
        outputs: (n, d) embeddings of the held-out rows.
        inputs: (n, d_in) the same rows before the map (for ``knn_preservation``).
        view_a, view_b: (n, d) embeddings of two augmented views of the same rows (for the view criteria).
        k: neighbours of the k-NN criteria.
        seed: seed of the bootstrap resamples.
    """
    z = _matrix(outputs, "outputs")
    values = {
        "rankme": rankme(z),
        "alpha_req": alpha_req(z),
        "uniformity": uniformity(z),
        "knn_bootstrap": knn_bootstrap_stability(z, k, seed),
    }
    if inputs is not None:
        values["knn_preservation"] = knn_preservation(inputs, z, k)
    if view_a is not None and view_b is not None:
        values["alignment"] = alignment(view_a, view_b)
        values["knn_stability"] = knn_overlap(view_a, view_b, k)
        values["lidar"] = lidar(view_a, view_b)
    return {c.name: values[c.name] for c in CRITERIA if c.name in values}


def criterion_scores(values: dict[str, float]) -> dict[str, float]:
    """Raw criterion values turned into scores where higher is better (lower-is-better ones negated,
    alpha-ReQ as -|alpha - 1|)."""
    better = {c.name: c.better for c in CRITERIA}
    scores = {}
    for name, value in values.items():
        if name not in better:
            raise KeyError(f"unknown criterion {name!r}; known: {', '.join(better)}.")
        direction = better[name]
        scores[name] = value if direction == "higher" else -value if direction == "lower" else -abs(value - 1)
    return scores


def make_views(
    x: np.ndarray,
    augment: Augmentation | Sequence[Any] | str,
    *,
    fit_on: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Two augmented views of the rows ``x``, from ``augment`` fitted on ``fit_on`` (default ``x``).

    Pass ``simskip_core.api.DEFAULT_AUGMENT`` (or a model's own ``augment``) for the refiner's views.
    """
    rows = _matrix(x, "x", 1)
    aug = build_augmentation(augment)
    aug.fit(torch.as_tensor(_matrix(rows if fit_on is None else fit_on, "fit_on", 1), dtype=torch.float32))
    xt = torch.as_tensor(rows, dtype=torch.float32)
    views = []
    for offset in (1, 2):
        generator = torch.Generator().manual_seed(seed * 2 + offset)
        views.append(aug(xt, generator).numpy().astype(np.float64))
    return views[0], views[1]


def map_criteria(
    transform: Callable[[np.ndarray], np.ndarray],
    x_held: np.ndarray,
    augment: Augmentation | Sequence[Any] | str,
    *,
    fit_on: np.ndarray | None = None,
    k: int = 10,
    seed: int = 0,
    max_rows: int = MAX_ROWS,
) -> dict[str, float]:
    """Criteria of a candidate *map* on held-out input rows ``x_held`` (at most ``max_rows`` of them).

    Two views of the input rows are made with ``augment`` (fitted on ``fit_on``, e.g. the rows the
    map was fitted on) and pushed through ``transform``, so alignment, view stability and LiDAR
    measure the map on the refiner's own positive pairs.
    """
    x = _matrix(x_held, "x_held")
    x = x[sample_rows(x.shape[0], max_rows, seed)]
    view_a, view_b = make_views(x, augment, fit_on=fit_on, seed=seed)

    def mapped(rows: np.ndarray) -> np.ndarray:
        return np.asarray(transform(rows.astype(np.float32)), dtype=np.float64)

    return compute_criteria(mapped(x), inputs=x, view_a=mapped(view_a), view_b=mapped(view_b), k=k, seed=seed)


def vector_criteria(
    z_held: np.ndarray,
    augment: Augmentation | Sequence[Any] | str,
    *,
    inputs: np.ndarray | None = None,
    k: int = 10,
    seed: int = 0,
    max_rows: int = MAX_ROWS,
) -> dict[str, float]:
    """Criteria of plain held-out vectors ``z_held`` without a map: the views are ``augment`` applied to
    the vectors themselves (fitted on them). ``inputs``, row-aligned with ``z_held``, adds
    ``knn_preservation``."""
    z = _matrix(z_held, "z_held")
    rows = sample_rows(z.shape[0], max_rows, seed)
    view_a, view_b = make_views(z[rows], augment, fit_on=z, seed=seed)
    x = None if inputs is None else _matrix(inputs, "inputs")[rows]
    return compute_criteria(z[rows], inputs=x, view_a=view_a, view_b=view_b, k=k, seed=seed)
