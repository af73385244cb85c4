"""Tests of the simskip losses: hand-written references, gradients, invariances, validation, registry coverage.

Each loss is checked against a plain reference written with Python loops over pairs (i, j) and
``math``, sharing no vectorised code with the implementation. :data:`TESTED_LOSSES` maps every
tested loss class to its case; :func:`test_every_registered_loss_is_tested` fails when a class
registered in ``loss_resolver`` has no entry there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from simskip_core.losses import (
    ContrastiveLoss,
    DifficultyAwareLoss,
    MultiSimilarityLoss,
    NTXentLoss,
    SpectralContrastiveLoss,
    StudentTLoss,
    loss_resolver,
)
from simskip_core.losses.difficulty import percentile
from simskip_core.losses.ntxent import multi_positive_infonce, views_mask

B, K, D = 5, 3, 4  # batch, projection dim, feature dim
SIGNALS = ("labels", "graph")

Rows = list[list[float]]
Mask = list[list[bool]] | None


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """One random batch: projections, features, an extra-positives mask and per-signal masks."""

    z_a: torch.Tensor
    z_b: torch.Tensor
    h_a: torch.Tensor
    h_b: torch.Tensor
    positives: torch.Tensor
    signals: dict[str, torch.Tensor]


def random_mask(generator: torch.Generator, p: float = 0.3) -> torch.Tensor:
    """A random symmetric (B, B) bool mask (the diagonal is random too: losses must ignore it)."""
    m = torch.rand(B, B, generator=generator) < p
    return m | m.T


def make_batch(seed: int = 0, requires_grad: bool = False) -> Batch:
    """A reproducible random batch."""
    g = torch.Generator().manual_seed(seed)
    z_a, z_b = torch.randn(B, K, generator=g), torch.randn(B, K, generator=g)
    h_a, h_b = torch.randn(B, D, generator=g), torch.randn(B, D, generator=g)
    positives = random_mask(g)
    signals = {name: random_mask(g) for name in SIGNALS}
    if requires_grad:
        for t in (z_a, z_b, h_a, h_b):
            t.requires_grad_(True)
    return Batch(z_a, z_b, h_a, h_b, positives, signals)


def call(loss: ContrastiveLoss, batch: Batch, *, with_positives: bool) -> torch.Tensor:
    """Call a loss with every keyword input, as the trainer does."""
    return loss(
        batch.z_a,
        batch.z_b,
        positives=batch.positives if with_positives else None,
        features=(batch.h_a, batch.h_b),
        signals=batch.signals,
    )


# ----------------------------------------------------------------------------------------------
# Plain references (loops over pairs, python floats)
# ----------------------------------------------------------------------------------------------


def rows_of(t: torch.Tensor) -> Rows:
    """The rows of a 2-D tensor as python floats."""
    return [[float(v) for v in row] for row in t.detach().tolist()]


def stacked(a: torch.Tensor, b: torch.Tensor) -> Rows:
    """Rows of a then rows of b, as python floats."""
    return rows_of(a) + rows_of(b)


def as_lists(mask: torch.Tensor | None) -> Mask:
    """A bool tensor as nested lists (None stays None)."""
    return None if mask is None else [[bool(v) for v in row] for row in mask.tolist()]


def dot(u: list[float], v: list[float]) -> float:
    """Dot product of two python vectors."""
    return sum(x * y for x, y in zip(u, v))


def cosine(u: list[float], v: list[float]) -> float:
    """Cosine similarity of two python vectors."""
    return dot(u, v) / (math.sqrt(dot(u, u)) * math.sqrt(dot(v, v)))


def is_positive(i: int, j: int, batch: int, positives: Mask) -> bool:
    """Whether stacked rows i != j are a positive pair: same item, or positive items."""
    a, b = i % batch, j % batch
    return a == b or (positives is not None and positives[a][b])


def ref_infonce(
    logit: Callable[[int, int], float],
    n: int,
    batch: int,
    positives: Mask,
    removed: Callable[[int, int], bool] = lambda i, j: False,
) -> float:
    """Mean over anchors i of -mean_{p in P(i)} log(exp(l_ip) / sum_{j != i, not removed} exp(l_ij))."""
    total = 0.0
    for i in range(n):
        pos = [j for j in range(n) if j != i and is_positive(i, j, batch, positives)]
        denom = sum(math.exp(logit(i, j)) for j in range(n) if j != i and not removed(i, j))
        total += -sum(logit(i, p) - math.log(denom) for p in pos) / len(pos)
    return total / n


def ref_ntxent(loss: NTXentLoss, batch: Batch, positives: Mask) -> float:
    """NT-Xent: cosine / tau logits."""
    z = stacked(batch.z_a, batch.z_b)
    return ref_infonce(lambda i, j: cosine(z[i], z[j]) / loss.temperature, len(z), B, positives)


def ref_student_t(loss: StudentTLoss, batch: Batch, positives: Mask) -> float:
    """t-SimCLR: standardise each dimension over the 2B rows, log Student-t kernel as logits."""
    z = stacked(batch.z_a, batch.z_b)
    n, k = len(z), len(z[0])
    for c in range(k):
        mean = sum(z[r][c] for r in range(n)) / n
        var = sum((z[r][c] - mean) ** 2 for r in range(n)) / n
        for r in range(n):
            z[r][c] = (z[r][c] - mean) / math.sqrt(var + loss.eps)

    def logit(i: int, j: int) -> float:
        d2 = sum((x - y) ** 2 for x, y in zip(z[i], z[j]))
        return -(loss.nu + 1) / 2 * math.log(1 + d2 / (loss.temperature * loss.nu))

    return ref_infonce(logit, n, B, positives)


def ref_spectral(loss: SpectralContrastiveLoss, batch: Batch, positives: Mask) -> float:
    """-2 mean over positive pairs of z_a_i . z_b_j + mean over i != j of (z_a_i . z_b_j)^2."""
    za, zb = rows_of(batch.z_a), rows_of(batch.z_b)
    if loss.max_norm is not None:
        for rows in (za, zb):
            for r, row in enumerate(rows):
                norm = math.sqrt(dot(row, row))
                if norm > loss.max_norm:
                    rows[r] = [v * loss.max_norm / norm for v in row]
    attract, n_pos, repel, n_neg = 0.0, 0, 0.0, 0
    for i in range(B):
        for j in range(B):
            if i == j or (positives is not None and positives[i][j]):
                attract += dot(za[i], zb[j])
                n_pos += 1
            if i != j:
                repel += dot(za[i], zb[j]) ** 2
                n_neg += 1
    return -2 * attract / n_pos + repel / n_neg


def ref_difficulty_flags(loss: DifficultyAwareLoss, batch: Batch, positives: Mask) -> list[list[bool]]:
    """Flags 1[t_low <= cos(h_i, h_j) < t_high] over negatives, thresholds by numpy.percentile."""
    h = stacked(batch.h_a, batch.h_b)
    n = len(h)
    candidates = [
        (i, j) for i in range(n) for j in range(n) if i != j and not is_positive(i, j, B, positives)
    ]
    sims = {(i, j): cosine(h[i], h[j]) for i, j in candidates}
    t_low = float(np.percentile(list(sims.values()), loss.low_percentile))
    t_high = (
        math.inf
        if loss.high_percentile == 100
        else float(np.percentile(list(sims.values()), loss.high_percentile))
    )
    flags = [[False] * n for _ in range(n)]
    for (i, j), s in sims.items():
        flags[i][j] = t_low <= s < t_high
    return flags


def ref_difficulty(loss: DifficultyAwareLoss, batch: Batch, positives: Mask) -> float:
    """NT-Xent with the flagged pairs removed, margin-shifted and/or temperature-scaled."""
    z = stacked(batch.z_a, batch.z_b)
    flags = ref_difficulty_flags(loss, batch, positives)
    sigma = loss.sigma if "margin" in loss.treatments else 0.0
    rho = loss.rho if "temperature" in loss.treatments else 1.0

    def logit(i: int, j: int) -> float:
        p = 1.0 if flags[i][j] else 0.0
        return (cosine(z[i], z[j]) + p * sigma) / ((p * rho + 1 - p) * loss.temperature)

    def removed(i: int, j: int) -> bool:
        return "removal" in loss.treatments and flags[i][j]

    return ref_infonce(logit, len(z), B, positives, removed)


def ref_multi_similarity(loss: MultiSimilarityLoss, batch: Batch, positives: Mask) -> float:
    """sum_c exp(-2 s_c) L_c + s_c, L_c the supervised-contrastive term on head c, row by row."""
    h = torch.cat([batch.h_a, batch.h_b]).detach()
    assert loss.log_sigma is not None
    total = 0.0
    for c, name in enumerate(loss.signal_names):
        with torch.no_grad():
            u = [[float(v) for v in loss.heads[c](h[r : r + 1])[0].tolist()] for r in range(2 * B)]
        mask = None if name == "views" else as_lists(batch.signals[name])

        def logit(i: int, j: int, u: Rows = u) -> float:
            return cosine(u[i], u[j]) / loss.temperature

        term = ref_infonce(logit, 2 * B, B, mask)
        s = float(loss.log_sigma[c].detach())
        total += math.exp(-2 * s) * term + s
    return total


# ----------------------------------------------------------------------------------------------
# The registry of tested losses (checked against loss_resolver below)
# ----------------------------------------------------------------------------------------------


def make_multi_similarity() -> MultiSimilarityLoss:
    """A set-up multi-similarity loss with non-trivial log-sigmas, so the weighting formula is tested."""
    torch.manual_seed(0)
    loss = MultiSimilarityLoss(temperature=0.3, projection_dim=3, hidden_dim=6)
    loss.setup(feature_dim=D, signal_names=list(SIGNALS))
    assert loss.log_sigma is not None
    with torch.no_grad():
        loss.log_sigma.copy_(torch.tensor([0.3, -0.2, 0.1]))
    return loss


@dataclass
class Case:
    """How to build a loss for the generic tests and its plain reference."""

    make: Callable[[], ContrastiveLoss]
    reference: Callable[..., float]


#: Every loss class with a reference test. The meta-test fails when loss_resolver has more.
TESTED_LOSSES: dict[type[ContrastiveLoss], Case] = {
    NTXentLoss: Case(lambda: NTXentLoss(temperature=0.3), ref_ntxent),
    StudentTLoss: Case(lambda: StudentTLoss(nu=2.5, temperature=0.7), ref_student_t),
    SpectralContrastiveLoss: Case(lambda: SpectralContrastiveLoss(max_norm=1.5), ref_spectral),
    DifficultyAwareLoss: Case(
        lambda: DifficultyAwareLoss(temperature=0.3, low_percentile=60, high_percentile=95), ref_difficulty
    ),
    MultiSimilarityLoss: Case(make_multi_similarity, ref_multi_similarity),
}

CASES = [pytest.param(cls, id=cls.__name__) for cls in TESTED_LOSSES]


# ----------------------------------------------------------------------------------------------
# Generic tests, one per registered loss
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_positives", [False, True], ids=["views-only", "with-positives"])
@pytest.mark.parametrize("cls", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_plain_reference(cls: type[ContrastiveLoss], with_positives: bool, seed: int) -> None:
    """The vectorised loss equals the loop-over-pairs reference on random inputs."""
    case = TESTED_LOSSES[cls]
    loss = case.make()
    batch = make_batch(seed)
    expected = case.reference(loss, batch, as_lists(batch.positives) if with_positives else None)
    got = float(call(loss, batch, with_positives=with_positives).detach())
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("cls", CASES)
def test_positives_change_the_loss(cls: type[ContrastiveLoss]) -> None:
    """Extra positives are used (the multi-similarity loss uses ``signals`` instead, so it ignores them)."""
    loss = TESTED_LOSSES[cls].make()
    batch = make_batch(0)
    without = float(call(loss, batch, with_positives=False).detach())
    with_ = float(call(loss, batch, with_positives=True).detach())
    if cls is MultiSimilarityLoss:
        assert with_ == without
    else:
        assert with_ != pytest.approx(without)


@pytest.mark.parametrize("cls", CASES)
def test_gradients_flow(cls: type[ContrastiveLoss]) -> None:
    """Gradients reach the inputs the loss trains (and its own parameters) and are finite and nonzero."""
    loss = TESTED_LOSSES[cls].make()
    batch = make_batch(0, requires_grad=True)
    call(loss, batch, with_positives=True).backward()
    trained = [batch.h_a, batch.h_b] if cls is MultiSimilarityLoss else [batch.z_a, batch.z_b]
    trained += list(loss.parameters())
    for t in trained:
        assert t.grad is not None
        assert torch.isfinite(t.grad).all()
        assert t.grad.abs().sum() > 0


@pytest.mark.parametrize("cls", CASES)
def test_rejects_mismatched_views(cls: type[ContrastiveLoss]) -> None:
    """Views of different shapes or a batch of one are refused with a clear message."""
    loss = TESTED_LOSSES[cls].make()
    batch = make_batch(0)
    with pytest.raises(ValueError, match="equal shape"):
        loss(batch.z_a, batch.z_b[:-1], features=(batch.h_a, batch.h_b), signals=batch.signals)
    with pytest.raises(ValueError, match="at least 2"):
        one = {name: m[:1, :1] for name, m in batch.signals.items()}
        loss(batch.z_a[:1], batch.z_b[:1], features=(batch.h_a[:1], batch.h_b[:1]), signals=one)


@pytest.mark.parametrize("cls", [c for c in CASES if c.values[0] is not MultiSimilarityLoss])
def test_rejects_positives_of_the_wrong_shape(cls: type[ContrastiveLoss]) -> None:
    """A positives mask that does not match the batch names the expected shape."""
    loss = TESTED_LOSSES[cls].make()
    batch = make_batch(0)
    with pytest.raises(ValueError, match=r"\(5, 5\)"):
        loss(batch.z_a, batch.z_b, positives=torch.zeros(B + 1, B + 1, dtype=torch.bool))


def test_every_registered_loss_is_tested() -> None:
    """pykeen-style meta-test: every simskip_core loss in loss_resolver has an entry in TESTED_LOSSES.

    Losses that plugins register (modules outside simskip_core) are tested by their plugin.
    """
    registered = {cls for cls in loss_resolver if cls.__module__.startswith("simskip_core.")}
    untested = sorted(cls.__name__ for cls in registered - set(TESTED_LOSSES))
    assert not untested, f"add these losses to TESTED_LOSSES with a plain reference: {untested}"
    assert set(TESTED_LOSSES) <= set(loss_resolver), "TESTED_LOSSES holds a class missing from loss_resolver"


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("ntxent", NTXentLoss),
        ("studentt", StudentTLoss),
        ("student-t", StudentTLoss),
        ("spectral", SpectralContrastiveLoss),
        ("spectralcontrastive", SpectralContrastiveLoss),
        ("difficulty", DifficultyAwareLoss),
        ("difficultyaware", DifficultyAwareLoss),
        ("DifficultyAwareLoss", DifficultyAwareLoss),
        ("multisimilarity", MultiSimilarityLoss),
        ("multi_similarity", MultiSimilarityLoss),
    ],
)
def test_resolver_names(name: str, cls: type[ContrastiveLoss]) -> None:
    """The documented names (and synonyms) resolve to the right classes."""
    assert loss_resolver.lookup(name) is cls
    assert isinstance(loss_resolver.make(name), cls)


# ----------------------------------------------------------------------------------------------
# Argument validation
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: NTXentLoss(temperature=0), "temperature"),
        (lambda: NTXentLoss(temperature=float("nan")), "temperature"),
        (lambda: StudentTLoss(nu=0), "nu"),
        (lambda: StudentTLoss(nu=-1.0), "nu"),
        (lambda: StudentTLoss(temperature=0), "temperature"),
        (lambda: StudentTLoss(eps=0), "eps"),
        (lambda: SpectralContrastiveLoss(max_norm=0), "max_norm"),
        (lambda: DifficultyAwareLoss(temperature=-1), "temperature"),
        (lambda: DifficultyAwareLoss(low_percentile=50, high_percentile=50), "percentile"),
        (lambda: DifficultyAwareLoss(low_percentile=0.9, high_percentile=0.5), "percentile"),
        (lambda: DifficultyAwareLoss(high_percentile=101), "percentile"),
        (lambda: DifficultyAwareLoss(treatments=("removal", "dropout")), "dropout"),
        (lambda: DifficultyAwareLoss(sigma=-0.1), "sigma"),
        (lambda: DifficultyAwareLoss(rho=0), "rho"),
        (lambda: MultiSimilarityLoss(temperature=0), "temperature"),
        (lambda: MultiSimilarityLoss(projection_dim=0), "projection_dim"),
        (lambda: MultiSimilarityLoss(depth=0), "depth"),
        (lambda: MultiSimilarityLoss(activation="swish"), "activation"),
    ],
)
def test_constructor_validation(factory: Callable[[], ContrastiveLoss], match: str) -> None:
    """Invalid hyperparameters raise ValueError naming the argument."""
    with pytest.raises(ValueError, match=match):
        factory()


# ----------------------------------------------------------------------------------------------
# NT-Xent, Student-t, spectral: invariances and known values
# ----------------------------------------------------------------------------------------------


def test_multi_positive_infonce_matches_cross_entropy_for_single_positives() -> None:
    """With one positive per anchor the helper is torch's cross entropy with the diagonal masked out."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2 * B, 2 * B, generator=g)
    target = torch.arange(2 * B).roll(B)  # the other view
    masked = logits.masked_fill(torch.eye(2 * B, dtype=torch.bool), float("-inf"))
    expected = torch.nn.functional.cross_entropy(masked, target)
    got = multi_positive_infonce(logits, views_mask(B, None, logits.device))
    assert torch.allclose(got, expected, atol=1e-6)


def test_ntxent_is_invariant_to_scaling_the_projections() -> None:
    """NT-Xent uses cosines only, so positive rescaling of any row leaves it unchanged."""
    loss = NTXentLoss()
    batch = make_batch(0)
    scale_a, scale_b = torch.rand(B, 1) * 10 + 0.1, torch.rand(B, 1) * 10 + 0.1
    base = loss(batch.z_a, batch.z_b, positives=batch.positives)
    scaled = loss(batch.z_a * scale_a, batch.z_b * scale_b, positives=batch.positives)
    assert torch.allclose(base, scaled, atol=1e-5)


def test_student_t_is_invariant_to_per_dimension_shift_and_scale() -> None:
    """Batch standardisation removes a per-dimension shift (exactly) and a positive rescaling (up to eps)."""
    loss = StudentTLoss()
    batch = make_batch(0)
    shift = torch.tensor([[5.0, -3.0, 100.0]])
    scale = torch.tensor([[2.0, 0.5, 7.0]])
    base = loss(batch.z_a, batch.z_b)
    assert torch.allclose(base, loss(batch.z_a + shift, batch.z_b + shift), atol=1e-4)
    assert torch.allclose(base, loss(batch.z_a * scale, batch.z_b * scale), atol=1e-4)
    # Shifting one view only moves the pairs apart and must change the loss.
    assert not torch.allclose(base, loss(batch.z_a + shift, batch.z_b), atol=1e-3)


def test_student_t_prefers_close_positives() -> None:
    """Identical views (distance 0) give a lower loss than unrelated views."""
    loss = StudentTLoss()
    batch = make_batch(0)
    assert loss(batch.z_a, batch.z_a) < loss(batch.z_a, batch.z_b)


def test_spectral_minimum_for_orthonormal_identical_views() -> None:
    """Identical orthonormal rows: attract term 1, repel term 0, so L = -2 (its lower bound at max_norm=1)."""
    z = torch.eye(4)
    assert float(SpectralContrastiveLoss()(z, z)) == pytest.approx(-2.0)


def test_spectral_clips_long_rows_to_max_norm() -> None:
    """Rows already at least max_norm long are projected onto the ball, so lengthening them changes nothing."""
    batch = make_batch(0)
    z_a = torch.nn.functional.normalize(batch.z_a, dim=1) * 2
    z_b = torch.nn.functional.normalize(batch.z_b, dim=1) * 2
    clipped = SpectralContrastiveLoss(max_norm=1.0)
    assert torch.allclose(clipped(z_a, z_b), clipped(z_a * 3, z_b * 3), atol=1e-6)
    raw = SpectralContrastiveLoss(max_norm=None)
    assert not torch.allclose(raw(z_a, z_b), raw(z_a * 3, z_b * 3))


# ----------------------------------------------------------------------------------------------
# Difficulty-aware loss
# ----------------------------------------------------------------------------------------------

TREATMENT_SETS = [("removal",), ("margin",), ("temperature",), ("margin", "temperature")]


@pytest.mark.parametrize("with_positives", [False, True])
def test_difficulty_without_treatments_is_ntxent(with_positives: bool) -> None:
    """With every treatment off, flags have no effect and the loss is NT-Xent."""
    batch = make_batch(2)
    positives = batch.positives if with_positives else None
    plain = DifficultyAwareLoss(temperature=0.4, treatments=())
    assert plain.difficult_pairs(batch.z_a, batch.z_b, positives=positives).any()
    got = plain(batch.z_a, batch.z_b, positives=positives, features=(batch.h_a, batch.h_b))
    assert torch.allclose(got, NTXentLoss(temperature=0.4)(batch.z_a, batch.z_b, positives=positives))


@pytest.mark.parametrize("treatments", TREATMENT_SETS, ids="+".join)
def test_difficulty_treatments_act_only_on_flagged_pairs(treatments: tuple[str, ...]) -> None:
    """Each treatment changes the loss when pairs are flagged, and not at all when none are."""
    batch = make_batch(1)
    loss = DifficultyAwareLoss(temperature=0.4, low_percentile=50, high_percentile=99, treatments=treatments)
    ntxent = NTXentLoss(temperature=0.4)(batch.z_a, batch.z_b)

    flagged = (batch.h_a, batch.h_b)
    assert loss.difficult_pairs(batch.z_a, batch.z_b, features=flagged).any()
    assert not torch.allclose(loss(batch.z_a, batch.z_b, features=flagged), ntxent)

    # Orthonormal features: every negative has cosine 0, so the percentile band [t, t) is empty.
    none_flagged = (torch.eye(B), torch.eye(B))
    assert not loss.difficult_pairs(batch.z_a, batch.z_b, features=none_flagged).any()
    assert torch.allclose(loss(batch.z_a, batch.z_b, features=none_flagged), ntxent)


def test_difficulty_treatment_directions() -> None:
    """Removal drops negatives (lower loss); a positive margin and a sharper temperature raise high-cosine negatives."""
    batch = make_batch(4)

    # Flag the negatives with the highest projection cosines (features=None falls back to the projections).
    def make(treatments: tuple[str, ...]) -> DifficultyAwareLoss:
        return DifficultyAwareLoss(
            temperature=0.5, low_percentile=80, high_percentile=100, treatments=treatments
        )

    ntxent = float(NTXentLoss(temperature=0.5)(batch.z_a, batch.z_b))
    assert float(make(("removal",))(batch.z_a, batch.z_b)) < ntxent
    assert float(make(("margin",))(batch.z_a, batch.z_b)) > ntxent
    flags = make(()).difficult_pairs(batch.z_a, batch.z_b)
    z = torch.nn.functional.normalize(torch.cat([batch.z_a, batch.z_b]), dim=1)
    assert flags.any() and bool(((z @ z.T)[flags] > 0).all())  # precondition: flagged cosines are positive
    assert float(make(("temperature",))(batch.z_a, batch.z_b)) > ntxent  # so rho < 1 makes them weigh more


def test_difficulty_flags_never_include_positives_and_follow_the_percentiles() -> None:
    """Positives and self-pairs are never flagged; the band (0, 100] flags every negative."""
    batch = make_batch(0)
    everything = DifficultyAwareLoss(low_percentile=0, high_percentile=100)
    flags = everything.difficult_pairs(batch.z_a, batch.z_b, positives=batch.positives)
    pos = views_mask(B, batch.positives, flags.device)
    eye = torch.eye(2 * B, dtype=torch.bool)
    assert not (flags & (pos | eye)).any()
    assert torch.equal(flags, ~pos & ~eye)

    band = DifficultyAwareLoss(low_percentile=60, high_percentile=95)
    flags = band.difficult_pairs(
        batch.z_a, batch.z_b, positives=batch.positives, features=(batch.h_a, batch.h_b)
    )
    expected = ref_difficulty_flags(band, batch, as_lists(batch.positives))
    assert flags.tolist() == expected


def test_difficulty_detects_on_projections_without_features() -> None:
    """features=None flags from the projections' cosines, and flags carry no gradient."""
    batch = make_batch(0, requires_grad=True)
    loss = DifficultyAwareLoss()
    assert torch.equal(
        loss.difficult_pairs(batch.z_a, batch.z_b),
        loss.difficult_pairs(batch.z_a, batch.z_b, features=(batch.z_a, batch.z_b)),
    )
    loss(batch.z_a, batch.z_b, features=(batch.h_a, batch.h_b)).backward()
    assert batch.h_a.grad is None and batch.h_b.grad is None  # features only feed the (no-grad) flags
    assert batch.z_a.grad is not None


def test_difficulty_rejects_bad_features() -> None:
    """Features for another batch size are refused with the expected shape."""
    batch = make_batch(0)
    with pytest.raises(ValueError, match="features"):
        DifficultyAwareLoss()(batch.z_a, batch.z_b, features=(batch.h_a[:-1], batch.h_b[:-1]))


# ----------------------------------------------------------------------------------------------
# Multi-similarity loss
# ----------------------------------------------------------------------------------------------


def gradient_step(module: torch.nn.Module, lr: float) -> None:
    """Plain gradient descent (torch.optim's first step costs seconds of lazy imports)."""
    with torch.no_grad():
        for p in module.parameters():
            if p.grad is not None:
                p.sub_(lr * p.grad)


def test_multi_similarity_requires_signals_and_features() -> None:
    """The loss declares it needs signals and says which inputs are missing."""
    assert MultiSimilarityLoss.requires_signals
    loss = make_multi_similarity()
    batch = make_batch(0)
    with pytest.raises(ValueError, match=r"needs signals=.*features=.*signals missing"):
        loss(batch.z_a, batch.z_b, features=(batch.h_a, batch.h_b))
    with pytest.raises(ValueError, match="features missing"):
        loss(batch.z_a, batch.z_b, signals=batch.signals)
    with pytest.raises(ValueError, match=r"missing \['labels'\]"):
        loss(batch.z_a, batch.z_b, features=(batch.h_a, batch.h_b), signals={"graph": batch.signals["graph"]})
    with pytest.raises(ValueError, match=r"unknown \['typo'\]"):
        loss(
            batch.z_a,
            batch.z_b,
            features=(batch.h_a, batch.h_b),
            signals={**batch.signals, "typo": batch.positives},
        )
    with pytest.raises(ValueError, match=r"signals\['graph'\]"):
        bad = {**batch.signals, "graph": torch.zeros(B, B + 1, dtype=torch.bool)}
        loss(batch.z_a, batch.z_b, features=(batch.h_a, batch.h_b), signals=bad)


def test_multi_similarity_setup() -> None:
    """setup is required, always adds 'views' first, deduplicates, and needs a signal besides the views."""
    loss = MultiSimilarityLoss()
    batch = make_batch(0)
    with pytest.raises(RuntimeError, match="setup"):
        loss(batch.z_a, batch.z_b, features=(batch.h_a, batch.h_b), signals=batch.signals)
    with pytest.raises(RuntimeError, match="setup"):
        loss.weights()
    with pytest.raises(ValueError, match="besides 'views'"):
        loss.setup(feature_dim=D, signal_names=["views"])
    loss.setup(feature_dim=D, signal_names=["labels", "views", "labels", "graph"])
    assert loss.signal_names == ("views", "labels", "graph")
    assert len(loss.heads) == 3
    assert loss.weights() == {"views": 1.0, "labels": 1.0, "graph": 1.0}
    n_params = sum(p.numel() for p in loss.parameters())
    assert n_params > 3  # heads and log-sigmas are registered, so the trainer's optimizer sees them
    with pytest.raises(ValueError, match=f"\\(B, {D}\\)"):
        loss(batch.z_a, batch.z_b, features=(batch.z_a, batch.z_b), signals=batch.signals)


def test_multi_similarity_weights_are_learnable() -> None:
    """One optimiser step on the loss moves every log-sigma, and weights() reports exp(-2 s)."""
    loss = make_multi_similarity()
    before = loss.weights()
    assert before["labels"] == pytest.approx(math.exp(0.4))
    batch = make_batch(0)
    call(loss, batch, with_positives=False).backward()
    gradient_step(loss, lr=0.1)
    after = loss.weights()
    assert all(after[name] != pytest.approx(before[name]) for name in before)


def test_multi_similarity_down_weights_a_noisy_signal() -> None:
    """On clustered toy data a consistent label signal ends with a larger weight than a random one."""
    g = torch.Generator().manual_seed(0)
    n, d, n_classes = 24, 8, 4
    labels = torch.arange(n) % n_classes
    x = 2 * torch.randn(n_classes, d, generator=g)[labels] + 0.5 * torch.randn(n, d, generator=g)
    consistent = labels[:, None] == labels[None, :]
    perm = torch.randperm(n, generator=g)
    noisy = consistent[perm][:, perm]  # same density as the consistent mask, unrelated to the data
    signals = {"consistent": consistent, "noisy": noisy}
    torch.manual_seed(0)
    loss = MultiSimilarityLoss(projection_dim=8, hidden_dim=16)
    loss.setup(feature_dim=d, signal_names=list(signals))
    for _ in range(15):
        h_a = x + 0.1 * torch.randn(n, d, generator=g)
        h_b = x + 0.1 * torch.randn(n, d, generator=g)
        loss.zero_grad()
        loss(h_a, h_b, features=(h_a, h_b), signals=signals).backward()
        gradient_step(loss, lr=0.2)
    weights = loss.weights()
    assert weights["noisy"] < 0.85 * weights["consistent"], weights


@pytest.mark.parametrize("q", [0.0, 12.5, 50.0, 90.0, 99.0, 100.0])
def test_percentile_matches_numpy(q: float) -> None:
    """The sort-based percentile used for the thresholds interpolates like numpy.percentile."""
    values = torch.randn(37, generator=torch.Generator().manual_seed(5))
    assert float(percentile(values, q)) == pytest.approx(float(np.percentile(values.numpy(), q)), abs=1e-6)


# ----------------------------------------------------------------------------------------------
# Difficulty thresholds by selection (torch.kthvalue) instead of a full sort
# ----------------------------------------------------------------------------------------------

TREATMENTS_ALL = ("removal", "margin", "temperature")
EDGE_PERCENTILES = [0.0, 0.1, 12.5, 33.3, 50.0, 90.0, 99.0, 99.9, 100.0]


def sorted_percentile(values: torch.Tensor, q: float) -> torch.Tensor:
    """The thresholds as computed before kthvalue: sort everything, interpolate two order statistics."""
    ordered = values.sort().values
    position = q / 100.0 * (ordered.numel() - 1)
    lo = math.floor(position)
    hi = min(lo + 1, ordered.numel() - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (position - lo)


def tied_values(seed: int, n: int) -> torch.Tensor:
    """Values with many ties: n draws from 7 levels."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 7, (n,), generator=g).float() / 7.0


@pytest.mark.parametrize("q", EDGE_PERCENTILES)
@pytest.mark.parametrize("kind", ["normal", "ties", "single", "pair", "large"])
def test_percentile_by_selection_equals_the_sorted_formula(q: float, kind: str) -> None:
    """Same value, bit for bit, as the sort-based formula, with ties and at the edge percentiles."""
    g = torch.Generator().manual_seed(11)
    values = {
        "normal": lambda: torch.randn(37, generator=g),
        "ties": lambda: tied_values(3, 50),
        "single": lambda: torch.randn(1, generator=g),
        "pair": lambda: torch.randn(2, generator=g),
        "large": lambda: torch.rand(261_120, generator=g) * 2 - 1,  # the negatives of a 512 x 512 matrix
    }[kind]()
    got, expected = percentile(values, q), sorted_percentile(values, q)
    assert got.dtype == expected.dtype and got.item() == expected.item()


def test_percentile_ranks_nan_last_like_a_sort() -> None:
    """NaNs sit above every number, as in the sorted formula."""
    values = torch.tensor([0.3, float("nan"), -1.0, 2.0, float("nan")])
    for q in EDGE_PERCENTILES:
        got, expected = percentile(values, q), sorted_percentile(values, q)
        assert (math.isnan(got.item()) and math.isnan(expected.item())) or got.item() == expected.item()


def test_percentile_does_not_sort(monkeypatch: pytest.MonkeyPatch) -> None:
    """The thresholds come from a selection: a full sort of the similarities is never run."""

    def no_sort(*args: object, **kwargs: object) -> None:
        raise AssertionError("percentile sorted its input")

    values = torch.randn(1000, generator=torch.Generator().manual_seed(2))
    expected = sorted_percentile(values, 90.0)
    monkeypatch.setattr(torch.Tensor, "sort", no_sort)
    monkeypatch.setattr(torch, "sort", no_sort)
    assert percentile(values, 90.0).item() == expected.item()


@pytest.mark.parametrize(
    ("values", "q", "match"),
    [
        (torch.empty(0), 50.0, "non-empty 1-D"),
        (torch.zeros(3, 4), 50.0, "non-empty 1-D"),
        (torch.zeros(5), -1.0, r"\[0, 100\]"),
        (torch.zeros(5), 100.5, r"\[0, 100\]"),
    ],
)
def test_percentile_rejects_bad_input(values: torch.Tensor, q: float, match: str) -> None:
    """Empty or 2-D input and a q outside [0, 100] are refused (a negative q used to wrap around silently)."""
    with pytest.raises(ValueError, match=match):
        percentile(values, q)


def tied_batch(seed: int, batch: int) -> tuple[torch.Tensor, ...]:
    """Projections and features where many rows repeat, so many negative cosines tie."""
    g = torch.Generator().manual_seed(seed)
    z_a, z_b = torch.randn(batch, 6, generator=g), torch.randn(batch, 6, generator=g)
    base = torch.randn(3, 5, generator=g)
    h_a = base[torch.randint(0, 3, (batch,), generator=g)]
    h_b = base[torch.randint(0, 3, (batch,), generator=g)]
    return z_a, z_b, h_a, h_b


@pytest.mark.parametrize(
    ("low", "high"), [(0.0, 100.0), (0.0, 0.5), (50.0, 99.0), (90.0, 99.0), (99.5, 100.0), (12.5, 87.5)]
)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_difficulty_loss_equals_sort_based_thresholds(
    monkeypatch: pytest.MonkeyPatch, low: float, high: float, seed: int, ties: bool
) -> None:
    """Flags and loss are identical to those of the sort-based thresholds on random batches."""
    from simskip_core.losses import difficulty

    if ties:
        z_a, z_b, h_a, h_b = tied_batch(seed, 24)
    else:
        g = torch.Generator().manual_seed(seed)
        z_a, z_b, h_a, h_b = (torch.randn(24, 6, generator=g) for _ in range(4))
    loss = DifficultyAwareLoss(
        temperature=0.3, low_percentile=low, high_percentile=high, treatments=TREATMENTS_ALL
    )

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        flags = loss.difficult_pairs(z_a, z_b, features=(h_a, h_b))
        return flags, loss(z_a, z_b, features=(h_a, h_b))

    flags, value = run()
    monkeypatch.setattr(difficulty, "percentile", sorted_percentile)
    old_flags, old_value = run()
    assert torch.equal(flags, old_flags)
    assert value.item() == old_value.item()
