"""Statistics of the benchmark suite on hand-made cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from simskip_core.bench.stats import (
    KSHOT_METRIC,
    MethodRecord,
    PairedBootstrap,
    holm,
    mean_std,
    overall_summary,
    summarize_task,
    verdict_interval,
)
from simskip_core.tasks import ItemScores


def _record(
    name: str, per_seed: dict[int | None, np.ndarray], family: str = "simskip", kind: str = "mean"
) -> MethodRecord:
    record = MethodRecord(name, family, False)
    for seed, values in per_seed.items():
        scores = ItemScores(kind, values)  # type: ignore[arg-type]
        record.metrics[seed] = {"acc": scores.statistic()}
        record.items[seed] = {"acc": scores}
    return record


@pytest.fixture
def base() -> np.ndarray:
    return (np.random.default_rng(0).random(400) < 0.7).astype(np.float64)


def test_identical_methods_have_zero_difference_and_p_one(base: np.ndarray) -> None:
    identity = _record("identity", {None: base}, family="baseline")
    same = _record("same", {s: base for s in range(3)})
    c = PairedBootstrap(n_boot=500).compare(same, identity, "acc")
    assert c.diff == 0.0 and c.ci_low == 0.0 and c.ci_high == 0.0
    assert c.p_value == 1.0 and c.n_items == 400 and c.n_seeds == 3


def test_clearly_better_method_is_significant(base: np.ndarray) -> None:
    identity = _record("identity", {None: base}, family="baseline")
    runs: dict[int | None, np.ndarray] = {}
    for seed in range(3):
        better = base.copy()
        better[np.flatnonzero(better == 0)[: 40 + seed]] = 1.0  # +10% accuracy, on the same items
        runs[seed] = better
    c = PairedBootstrap(n_boot=500).compare(_record("better", runs), identity, "acc")
    assert c.diff == pytest.approx(np.mean([40, 41, 42]) / 400)
    assert c.p_value is not None and c.p_value < 0.01
    assert c.ci_low is not None and c.ci_low > 0


def test_difference_within_noise_is_a_tie(base: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    identity = _record("identity", {None: base}, family="baseline")
    runs: dict[int | None, np.ndarray] = {}
    for seed in range(3):
        noisy = base.copy()
        flip = rng.choice(400, size=6, replace=False)
        noisy[flip] = 1.0 - noisy[flip]  # a few random flips either way
        runs[seed] = noisy
    summary = summarize_task(
        "t", "acc", [identity, _record("noisy", runs)], bootstrap=PairedBootstrap(n_boot=500)
    )
    comparison = summary["rows"]["noisy"]["comparisons"]["vs_identity"]
    assert comparison["outcome"] == "tie" and comparison["p_holm"] > 0.05


def test_seed_variance_counts_in_the_test() -> None:
    # two seeds: one far better, one far worse than identity: the mean difference is ~0 and not significant
    base = np.zeros(300)
    good, bad = base.copy(), base.copy()
    good[:150] = 1.0
    identity = _record("identity", {None: base + 0.0}, family="baseline")
    identity.metrics[None]["acc"] = 0.25
    identity.items[None]["acc"] = ItemScores("mean", np.r_[np.ones(75), np.zeros(225)])
    mixed = _record("mixed", {0: good, 1: bad})
    c = PairedBootstrap(n_boot=1000).compare(mixed, identity, "acc")
    assert c.diff == pytest.approx(0.0)
    assert c.p_value is not None and c.p_value > 0.2


def test_spearman_kind() -> None:
    rng = np.random.default_rng(0)
    gold = rng.normal(size=200)
    weak = np.stack([gold + 2.0 * rng.normal(size=200), gold], axis=1)
    strong = np.stack([gold + 0.2 * rng.normal(size=200), gold], axis=1)
    identity = _record("identity", {None: weak}, family="baseline", kind="spearman")
    bootstrap = PairedBootstrap(n_boot=500)
    assert bootstrap.compare(identity, identity, "acc").p_value == 1.0
    c = bootstrap.compare(_record("strong", {0: strong}, kind="spearman"), identity, "acc")
    assert c.diff > 0.3 and c.p_value is not None and c.p_value < 0.01


def test_verdict_and_tallies(base: np.ndarray) -> None:
    identity = _record("identity", {None: base}, family="baseline")
    whitening = _record("whitening", {None: base}, family="baseline")
    better = base.copy()
    better[np.flatnonzero(better == 0)[:60]] = 1.0
    refiner = _record("simskip-ntxent", {0: better, 1: better})
    control = _record("random-residual", {0: base, 1: base}, family="control")
    summary = summarize_task(
        "t", "acc", [identity, whitening, refiner, control], bootstrap=PairedBootstrap(n_boot=500)
    )
    assert summary["best"] == "simskip-ntxent"
    assert "beyond noise: yes (simskip-ntxent)" in summary["verdict"]
    assert "random-residual control: +0.1500" in summary["verdict"]
    tallies = overall_summary([summary])["tallies"]
    assert tallies["vs_identity"]["win"] == 1 and tallies["vs_best_baseline"]["win"] == 1
    assert tallies["vs_identity"]["tie"] == 0  # baselines and the control are not counted as refiners


def test_holm_and_mean_std() -> None:
    assert holm([0.01, 0.04, None, 0.03]) == pytest.approx([0.03, 0.06, None, 0.06])
    assert mean_std([1.0, 3.0]) == pytest.approx((2.0, np.sqrt(2.0)))
    assert mean_std([0.5]) == (0.5, 0.0)
    mean, std = mean_std([])
    assert np.isnan(mean) and np.isnan(std)


def test_verdict_interval_is_the_compared_interval_on_the_metric_scale(base: np.ndarray) -> None:
    """Primary metric: identity's mean + the vs_identity interval; k-shot metric: against the k-shot probe."""
    identity = _record("identity", {None: base}, family="baseline")
    better = base.copy()
    better[np.flatnonzero(better == 0)[:60]] = 1.0
    refiner = _record("simskip-ntxent", {0: better, 1: better})
    probe = MethodRecord("fewlabel-probe", "probe", True)
    few = MethodRecord("fewlabel-simskip", "simskip", True)
    for record, values in ((probe, base), (few, better)):
        scores = {"acc": ItemScores("mean", base), KSHOT_METRIC: ItemScores("mean", values)}
        record.items[0] = scores
        record.metrics[0] = {k: v.statistic() for k, v in scores.items()}
    summary = summarize_task(
        "t", "acc", [identity, refiner, probe, few], bootstrap=PairedBootstrap(n_boot=300)
    )
    c = summary["rows"]["simskip-ntxent"]["comparisons"]["vs_identity"]
    interval = verdict_interval(summary, "simskip-ntxent", "acc")
    assert interval is not None and interval.reference == "identity" and interval.outcome == "win"
    assert interval.reference_mean == pytest.approx(base.mean())
    assert (interval.low, interval.high) == (base.mean() + c["ci_low"], base.mean() + c["ci_high"])
    kshot = verdict_interval(summary, "fewlabel-simskip", KSHOT_METRIC)
    c = summary["rows"]["fewlabel-simskip"]["comparisons"]["vs_fewlabel_probe"]
    assert kshot is not None and kshot.reference == "fewlabel-probe"
    assert (kshot.low, kshot.high) == (base.mean() + c["ci_low"], base.mean() + c["ci_high"])
    assert verdict_interval(summary, "identity", "acc") is None  # the reference itself
    assert verdict_interval(summary, "fewlabel-probe", KSHOT_METRIC) is None
    assert verdict_interval(summary, "simskip-ntxent", "other") is None  # not a tested metric
    assert verdict_interval(summary, "missing", "acc") is None
