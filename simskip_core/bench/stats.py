"""Statistics of the benchmark suite: mean ± std, paired bootstrap over test items and seeds, verdicts.

Significance of a difference between two methods on one task comes from a paired bootstrap that
resamples *both* the test items (the same resampled items for the two methods) and the refiner seeds.
Test sets are small, so a std over seeds alone understates the uncertainty; resampling seeds as well
keeps a lucky seed from looking like an effect.

For a resample b with item indices I_b (n drawn with replacement) and seed multiset S_b (S drawn
with replacement), the statistic is

    delta_b = mean_{s in S_b} [ metric(method_s, I_b) - metric(reference_s, I_b) ]

where ``metric`` is the task's metric recomputed from per-item scores (:class:`ItemScores`: a mean,
or Spearman's rho). The observed difference averages over all seeds and items. The two-sided p-value
is ``2 * min(P(delta <= 0), P(delta >= 0))`` with the usual +1 correction, so identical methods get
p = 1 and a difference the bootstrap never crosses gets p = 2 / (B + 1). Within one task and one
reference the p-values of all compared methods are Holm-adjusted; win / tie / loss uses the adjusted
p-value at ``alpha`` (0.05).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from math import isfinite
from typing import Any

import numpy as np
from scipy.stats import rankdata

from simskip_core.tasks import ItemScores

__all__ = [
    "KSHOT_METRIC",
    "Comparison",
    "MethodRecord",
    "PairedBootstrap",
    "VerdictInterval",
    "holm",
    "is_refinement",
    "mean_std",
    "overall_summary",
    "summarize_task",
    "verdict_interval",
]

#: The metric of the label-using section: a logistic-regression probe trained on the k labelled items.
KSHOT_METRIC = "kshot_probe_acc"


def is_refinement(name: str, family: str) -> bool:
    """Whether a row is a SimSkip refinement (family "simskip" or a name starting with "simskip"),
    the rows the verdicts and the wins / ties / losses line are about."""
    return family == "simskip" or name.startswith("simskip")


#: Reference methods.
IDENTITY = "identity"
FEWLABEL_REFERENCE = "fewlabel-probe"
#: The trained refiner and its random-residual control.
TRAINED, CONTROL = "simskip-ntxent", "random-residual"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1; 0.0 for a single value) of the finite ``values``; NaNs when none."""
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (None entries stay None and are not counted)."""
    present = [(p, i) for i, p in enumerate(pvalues) if p is not None]
    m = len(present)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(present)):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


@dataclass
class Comparison:
    """A method against a reference on one metric of one task.

    Attributes:
        method, reference, metric: what was compared.
        diff: observed mean difference (method − reference), averaged over seeds.
        ci_low, ci_high: 95% bootstrap percentile interval of the difference.
        p_value: two-sided bootstrap p-value; None without per-item scores.
        p_holm: Holm-adjusted p-value among the task's comparisons with the same reference.
        outcome: "win", "tie", "loss", or "n/a" (no per-item scores).
        n_items, n_seeds: test items and seeds resampled.
    """

    method: str
    reference: str
    metric: str
    diff: float
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    n_items: int
    n_seeds: int
    p_holm: float | None = None
    outcome: str = "n/a"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable fields."""
        return asdict(self)


@dataclass
class MethodRecord:
    """Everything the statistics need about one method on one task.

    ``metrics`` and ``items`` are keyed by seed; a deterministic method has the single key ``None``,
    meaning "the same for every seed".
    """

    name: str
    family: str
    uses_labels: bool
    metrics: dict[int | None, dict[str, float]] = field(default_factory=dict)
    items: dict[int | None, dict[str, ItemScores]] = field(default_factory=dict)

    @property
    def deterministic(self) -> bool:
        """True when the method was run once for all seeds."""
        return list(self.metrics) == [None]

    def values(self, metric: str) -> list[float]:
        """The metric's value per run (one value for a deterministic method)."""
        return [m[metric] for m in self.metrics.values() if metric in m and m[metric] is not None]

    def seeds(self) -> set[int]:
        """Seeds with results (empty for a deterministic method)."""
        return {s for s in self.metrics if s is not None}

    def item_scores(self, metric: str, seed: int) -> ItemScores | None:
        """Per-item scores of ``metric`` for ``seed`` (the shared run of a deterministic method)."""
        key: int | None = None if self.deterministic else seed
        return self.items.get(key, {}).get(metric)


class PairedBootstrap:
    """Paired bootstrap over test items and seeds; item and seed resamples are shared by every
    comparison with the same number of items and seeds (common random numbers), so they are drawn
    once per task rather than once per comparison.

    Args:
        n_boot: bootstrap resamples B.
        seed: seed of the resampling.
        alpha: significance level of win / loss.
    """

    def __init__(self, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> None:
        if n_boot < 100:
            raise ValueError(f"n_boot must be >= 100 for a usable p-value, got {n_boot}.")
        self.n_boot = n_boot
        self.seed = seed
        self.alpha = alpha
        self._counts: dict[int, np.ndarray] = {}
        self._indices: dict[int, np.ndarray] = {}
        self._seed_weights: dict[int, np.ndarray] = {}
        self._gold_ranks: dict[tuple[int, bytes], np.ndarray] = {}

    # ---------------------------------------------------------------- resamples
    def _item_indices(self, n: int) -> np.ndarray:
        if n not in self._indices:
            rng = np.random.default_rng([self.seed, n, 1])
            self._indices[n] = rng.integers(0, n, size=(self.n_boot, n), dtype=np.int64)
        return self._indices[n]

    def _item_counts(self, n: int) -> np.ndarray:
        """(B, n) float32 multiplicities of each item in each resample (drawn in chunks)."""
        if n not in self._counts:
            rng = np.random.default_rng([self.seed, n, 1])
            counts = np.empty((self.n_boot, n), dtype=np.float32)
            chunk = max(1, 2_000_000 // max(n, 1))
            for start in range(0, self.n_boot, chunk):
                rows = min(chunk, self.n_boot - start)
                idx = (
                    rng.integers(0, n, size=(rows, n), dtype=np.int64)
                    + (np.arange(rows, dtype=np.int64) * n)[:, None]
                )
                counts[start : start + rows] = np.bincount(idx.ravel(), minlength=rows * n).reshape(rows, n)
            self._counts[n] = counts
        return self._counts[n]

    def _seed_resample(self, n_seeds: int) -> np.ndarray:
        """(B, S) multiplicities of each seed in each resample, divided by S."""
        if n_seeds not in self._seed_weights:
            rng = np.random.default_rng([self.seed, n_seeds, 2])
            counts = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=self.n_boot)
            self._seed_weights[n_seeds] = counts.astype(np.float64) / n_seeds
        return self._seed_weights[n_seeds]

    # ---------------------------------------------------------------- per-seed statistics on resamples
    def _mean_stats(self, values: np.ndarray) -> np.ndarray:
        """(B,) mean of ``values`` (n,) on every resample."""
        counts = self._item_counts(values.shape[0])
        return (counts @ values.astype(np.float32)).astype(np.float64) / values.shape[0]

    def _spearman_stats(self, values: np.ndarray) -> np.ndarray:
        """(B,) Spearman's rho of ``values`` (n, 2) on every resample (ties get average ranks)."""
        n = values.shape[0]
        idx = self._item_indices(n)
        gold = values[:, 1]
        key = (n, gold.tobytes())
        if key not in self._gold_ranks:
            self._gold_ranks[key] = _centred_ranks(gold[idx])
        g = self._gold_ranks[key]
        p = _centred_ranks(values[:, 0][idx])
        num = (p * g).sum(axis=1)
        den = np.sqrt((p * p).sum(axis=1) * (g * g).sum(axis=1))
        with np.errstate(invalid="ignore", divide="ignore"):
            rho = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
        return rho

    def _resampled(self, scores: ItemScores) -> np.ndarray:
        values = np.asarray(scores.values, dtype=np.float64)
        return self._mean_stats(values) if scores.kind == "mean" else self._spearman_stats(values)

    # ---------------------------------------------------------------- comparison
    def compare(self, method: MethodRecord, reference: MethodRecord, metric: str) -> Comparison:
        """Compare ``method`` with ``reference`` on ``metric`` over their common seeds (a deterministic
        record pairs with every seed of the other)."""
        seeds: list[int | None]
        if method.deterministic and reference.deterministic:
            seeds = [None]
        elif method.deterministic:
            seeds = [*sorted(reference.seeds())]
        elif reference.deterministic:
            seeds = [*sorted(method.seeds())]
        else:
            seeds = [*sorted(method.seeds() & reference.seeds())]
        observed = []
        for s in seeds:
            mk: int | None = None if method.deterministic else s
            rk: int | None = None if reference.deterministic else s
            a, b = method.metrics.get(mk, {}).get(metric), reference.metrics.get(rk, {}).get(metric)
            if a is not None and b is not None:
                observed.append(a - b)
        diff = float(np.mean(observed)) if observed else float("nan")
        pairs: list[tuple[ItemScores, ItemScores]] = []
        for s in seeds:
            ma = method.items.get(None if method.deterministic else s, {}).get(metric)
            rb = reference.items.get(None if reference.deterministic else s, {}).get(metric)
            if ma is None or rb is None:
                pairs = []
                break
            pairs.append((ma, rb))
        if not seeds or not pairs:
            return Comparison(method.name, reference.name, metric, diff, None, None, None, 0, len(seeds))
        n = len(pairs[0][0].values)
        for ma, rb in pairs:
            if len(ma.values) != n or len(rb.values) != n or ma.kind != rb.kind:
                raise ValueError(
                    f"per-item scores of {method.name!r} and {reference.name!r} on {metric!r} are not aligned "
                    f"(lengths {len(ma.values)} vs {len(rb.values)}, kinds {ma.kind} vs {rb.kind})."
                )
        cache: dict[int, np.ndarray] = {}

        def resampled(scores: ItemScores) -> np.ndarray:
            key = id(scores)
            if key not in cache:
                cache[key] = self._resampled(scores)
            return cache[key]

        per_seed = np.stack([resampled(ma) - resampled(rb) for ma, rb in pairs], axis=1)  # (B, S)
        weights = self._seed_resample(len(pairs))
        deltas = (per_seed * weights).sum(axis=1)
        if not np.all(np.isfinite(deltas)):
            deltas = deltas[np.isfinite(deltas)]
        b = len(deltas)
        below = (int((deltas <= 0).sum()) + 1) / (b + 1)
        above = (int((deltas >= 0).sum()) + 1) / (b + 1)
        p = min(1.0, 2.0 * min(below, above))
        low, high = np.percentile(deltas, [2.5, 97.5])
        return Comparison(
            method.name, reference.name, metric, diff, float(low), float(high), float(p), n, len(pairs)
        )


def _centred_ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks along axis 1, centred per row."""
    ranks = rankdata(values, axis=1)
    return ranks - ranks.mean(axis=1, keepdims=True)


def _finalise(comparisons: list[Comparison], alpha: float) -> None:
    adjusted = holm([c.p_value for c in comparisons])
    for c, p in zip(comparisons, adjusted):
        c.p_holm = p
        if p is None or not np.isfinite(c.diff):
            c.outcome = "n/a"
        elif p < alpha and c.diff > 0:
            c.outcome = "win"
        elif p < alpha and c.diff < 0:
            c.outcome = "loss"
        else:
            c.outcome = "tie"


def _fmt(values: Sequence[float]) -> str:
    """``mean ± std`` of several runs, the bare value of one."""
    mean, std = mean_std(values)
    return f"{mean:.4f}" if len(values) == 1 else f"{mean:.4f} ± {std:.4f}"


def summarize_task(
    task: str,
    primary: str,
    records: Sequence[MethodRecord],
    *,
    bootstrap: PairedBootstrap | None = None,
) -> dict[str, Any]:
    """Statistics and verdict of one task.

    Label-free rows are compared with ``identity`` and with the best non-learned baseline (the
    label-free method of family "baseline" with the highest mean primary metric) on the primary
    metric. Label-using rows are compared with ``fewlabel-probe`` on :data:`KSHOT_METRIC` when both
    have it, and with ``identity`` on the primary metric.

    Returns a JSON-serialisable dict: ``rows`` (per method: family, section, mean/std of every metric,
    comparisons), ``best_baseline``, ``best``, ``verdict`` and, for the label-using section,
    ``fewlabel_verdict``.
    """
    bootstrap = bootstrap or PairedBootstrap()
    by_name = {r.name: r for r in records}
    free = [r for r in records if not r.uses_labels]
    using = [r for r in records if r.uses_labels]
    rows: dict[str, dict[str, Any]] = {}
    for r in records:
        metrics = sorted({m for values in r.metrics.values() for m in values})
        rows[r.name] = {
            "family": r.family,
            "section": "label-using" if r.uses_labels else "label-free",
            "n_runs": len(r.metrics),
            "seeds": sorted(seed for seed in r.metrics if seed is not None),
            "deterministic": r.deterministic,
            "metrics": {m: dict(zip(("mean", "std"), mean_std(r.values(m)))) for m in metrics},
            "comparisons": {},
        }

    def mean_of(r: MethodRecord, metric: str) -> float:
        value = mean_std(r.values(metric))[0]
        return value if np.isfinite(value) else -np.inf

    baselines = [r for r in free if r.family == "baseline" and r.values(primary)]
    best_baseline = max(baselines, key=lambda r: mean_of(r, primary)).name if baselines else None
    groups: list[tuple[str, str, list[MethodRecord], str]] = []
    if IDENTITY in by_name:
        groups.append(("vs_identity", IDENTITY, [r for r in records if r.name != IDENTITY], primary))
    if best_baseline is not None and best_baseline != IDENTITY:
        groups.append(
            ("vs_best_baseline", best_baseline, [r for r in free if r.name != best_baseline], primary)
        )
    reference = by_name.get(FEWLABEL_REFERENCE)
    if reference is not None and reference.values(KSHOT_METRIC):
        targets = [r for r in using if r.name != FEWLABEL_REFERENCE and r.values(KSHOT_METRIC)]
        groups.append(("vs_fewlabel_probe", FEWLABEL_REFERENCE, targets, KSHOT_METRIC))
    for key, ref_name, targets, metric in groups:
        comparisons = [bootstrap.compare(r, by_name[ref_name], metric) for r in targets if r.values(metric)]
        _finalise(comparisons, bootstrap.alpha)
        for c in comparisons:
            rows[c.method]["comparisons"][key] = c.to_dict()
    if best_baseline is not None and best_baseline == IDENTITY:
        for r in free:
            if r.name != IDENTITY and "vs_identity" in rows[r.name]["comparisons"]:
                rows[r.name]["comparisons"]["vs_best_baseline"] = rows[r.name]["comparisons"]["vs_identity"]

    trained, control = by_name.get(TRAINED), by_name.get(CONTROL)
    if trained is not None and control is not None and trained.values(primary) and control.values(primary):
        # one planned comparison (no Holm adjustment): does training beat a random map of the same size?
        versus = bootstrap.compare(trained, control, primary)
        _finalise([versus], bootstrap.alpha)
        rows[TRAINED]["comparisons"]["vs_control"] = versus.to_dict()
    summary: dict[str, Any] = {
        "task": task,
        "primary_metric": primary,
        "rows": rows,
        "best_baseline": best_baseline,
    }
    ranked = [r for r in free if r.values(primary)]
    if ranked:
        best = max(ranked, key=lambda r: mean_of(r, primary))
        summary["best"] = best.name
        summary["verdict"] = _verdict(primary, best, ranked, best_baseline, rows)
    else:
        summary["best"] = None
        summary["verdict"] = "no label-free method produced the primary metric"
    if reference is not None and "vs_fewlabel_probe" in {g[0] for g in groups}:
        summary["fewlabel_verdict"] = _fewlabel_verdict(using, rows)
    return summary


def _verdict(
    primary: str,
    best: MethodRecord,
    ranked: Sequence[MethodRecord],
    best_baseline: str | None,
    rows: Mapping[str, Any],
) -> str:
    text = f"best label-free method: {best.name} ({primary} {_fmt(best.values(primary))})"
    if best_baseline is None:
        return text + "; no non-learned baseline to compare with"
    learned = [r for r in ranked if is_refinement(r.name, r.family)]
    beating = [
        r.name
        for r in learned
        if rows[r.name]["comparisons"].get("vs_best_baseline", {}).get("outcome") == "win"
    ]
    losing = [
        r.name
        for r in learned
        if rows[r.name]["comparisons"].get("vs_best_baseline", {}).get("outcome") == "loss"
    ]
    if beating:
        text += f". Refinement beats the best non-learned option ({best_baseline}) beyond noise: yes ({', '.join(beating)})"
    else:
        text += f". Refinement beats the best non-learned option ({best_baseline}) beyond noise: no"
    if losing:
        text += f"; significantly worse than it: {', '.join(losing)}"
    versus = rows.get(TRAINED, {}).get("comparisons", {}).get("vs_control")
    if versus is not None:
        p = versus["p_value"]
        p_text = "" if p is None else f", p = {p:.3f}: {versus['outcome']}"
        text += f". {TRAINED} vs its {CONTROL} control: {versus['diff']:+.4f}{p_text}"
    return text + "."


def _fewlabel_verdict(using: Sequence[MethodRecord], rows: Mapping[str, Any]) -> str:
    candidates = [r for r in using if r.values(KSHOT_METRIC)]
    if not candidates:
        return "no label-using method produced the k-shot metric"
    best = max(candidates, key=lambda r: mean_std(r.values(KSHOT_METRIC))[0])
    beating = [
        r.name
        for r in using
        if rows[r.name]["comparisons"].get("vs_fewlabel_probe", {}).get("outcome") == "win"
    ]
    text = f"best label-using method on {KSHOT_METRIC}: {best.name} ({_fmt(best.values(KSHOT_METRIC))}); "
    text += f"beats the k-shot probe on raw embeddings beyond noise: {'yes (' + ', '.join(beating) + ')' if beating else 'no'}."
    return text


def overall_summary(task_summaries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Wins / ties / losses of the label-free SimSkip refinements (:func:`is_refinement`) against
    identity and against each task's best non-learned baseline, and of the label-using methods against ``fewlabel-probe``."""
    tallies: dict[str, dict[str, int]] = {
        key: {"win": 0, "tie": 0, "loss": 0, "n/a": 0}
        for key in ("vs_identity", "vs_best_baseline", "vs_fewlabel_probe")
    }
    for summary in task_summaries:
        for name, row in summary["rows"].items():
            learned = is_refinement(name, row["family"])
            for key, tally in tallies.items():
                if key == "vs_fewlabel_probe":
                    counted = row["section"] == "label-using"
                else:
                    counted = learned and row["section"] == "label-free"
                comparison = row["comparisons"].get(key)
                if counted and comparison is not None:
                    tally[comparison["outcome"]] += 1
    lines = []
    labels = {
        "vs_identity": "label-free SimSkip refinements vs identity",
        "vs_best_baseline": "label-free SimSkip refinements vs the best non-learned baseline",
        "vs_fewlabel_probe": "label-using methods vs the k-shot probe",
    }
    for key, tally in tallies.items():
        total = tally["win"] + tally["tie"] + tally["loss"]
        if total:
            lines.append(f"{labels[key]}: {tally['win']} wins / {tally['tie']} ties / {tally['loss']} losses")
    return {"tallies": tallies, "lines": lines}


@dataclass(frozen=True)
class VerdictInterval:
    """A row's paired-bootstrap comparison as the verdicts use it, on the metric's own scale.

    Attributes:
        reference: the row compared with (``identity``, or ``fewlabel-probe`` for :data:`KSHOT_METRIC`).
        reference_mean: the reference's mean of the metric.
        low, high: ``reference_mean`` plus the 95% interval (``ci_low``, ``ci_high``) of the
            difference: the interval crosses the reference's value exactly when the difference's
            interval holds 0.
        outcome: "win", "tie" or "loss" (Holm-adjusted, as in the tables and verdicts).
    """

    reference: str
    reference_mean: float
    low: float
    high: float
    outcome: str


def verdict_interval(summary: Mapping[str, Any], method: str, metric: str) -> VerdictInterval | None:
    """The interval and outcome the report's tables give ``method`` on ``metric`` of a task summary
    (from :func:`summarize_task`): its comparison with ``fewlabel-probe`` on :data:`KSHOT_METRIC`,
    with ``identity`` on the primary metric; None for other metrics, for the references themselves
    and for comparisons without an interval (no per-item scores)."""
    if metric == KSHOT_METRIC:
        key = "vs_fewlabel_probe"
    elif metric == summary["primary_metric"]:
        key = "vs_identity"
    else:
        return None
    comparison = summary["rows"].get(method, {}).get("comparisons", {}).get(key)
    if comparison is None or comparison["metric"] != metric or comparison["ci_low"] is None:
        return None
    reference = comparison["reference"]
    stats = summary["rows"].get(reference, {}).get("metrics", {}).get(metric)
    if stats is None or not isfinite(stats["mean"]):
        return None
    base = float(stats["mean"])
    return VerdictInterval(
        reference, base, base + comparison["ci_low"], base + comparison["ci_high"], comparison["outcome"]
    )
