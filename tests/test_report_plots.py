"""The report's plots, read through matplotlib's objects (no pixel comparisons) on a small synthetic summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.container import ErrorbarContainer
from matplotlib.patches import Rectangle

from simskip_core.bench.report import (
    MIN_PROJECTION_POINTS,
    bar_figure,
    projection_figure,
    write_plots,
)
from simskip_core.bench.stats import (
    KSHOT_METRIC,
    MethodRecord,
    PairedBootstrap,
    summarize_task,
    verdict_interval,
)
from simskip_core.tasks import ItemScores

N_ITEMS = 300


def _record(
    name: str, family: str, runs: dict[int | None, dict[str, np.ndarray]], uses_labels: bool = False
) -> MethodRecord:
    """A method record from per-seed, per-metric item scores (each metric's value is their mean)."""
    record = MethodRecord(name, family, uses_labels)
    for seed, metrics in runs.items():
        scores = {metric: ItemScores("mean", values) for metric, values in metrics.items()}
        record.items[seed] = scores
        record.metrics[seed] = {metric: s.statistic() for metric, s in scores.items()}
    return record


def _hits(rng: np.random.Generator, rate: float) -> np.ndarray:
    return (rng.random(N_ITEMS) < rate).astype(np.float64)


@pytest.fixture(scope="module")
def summary() -> dict[str, Any]:
    """A task like the KG ones: mrr near 0.33 and hits10 near 0.96, one row of every family group,
    a single seed (so every seed std is 0), and a label-using section with the k-shot metric."""
    rng = np.random.default_rng(0)
    base_mrr, base_hits = _hits(rng, 0.33), _hits(rng, 0.96)
    worse = base_mrr.copy()
    worse[np.flatnonzero(worse == 1)[:30]] = 0.0  # 10 points lower on the same items: a loss
    better = base_mrr.copy()
    better[np.flatnonzero(better == 0)[:30]] = 1.0  # a win
    kshot = _hits(rng, 0.6)
    kshot_better = kshot.copy()
    kshot_better[np.flatnonzero(kshot_better == 0)[:40]] = 1.0

    def runs(
        mrr: np.ndarray, seeds: tuple[int | None, ...] = (0,), extra: dict[str, np.ndarray] | None = None
    ) -> Any:
        return {seed: {"mrr": mrr, "hits10": base_hits, **(extra or {})} for seed in seeds}

    records = [
        _record("identity", "baseline", runs(base_mrr, (None,))),
        _record("whitening", "baseline", runs(worse, (None,))),
        _record("simskip-ntxent", "simskip", runs(better)),
        _record("random-residual", "control", runs(base_mrr)),
        _record("identity+relation-refit", "kg-refit", runs(worse, (None,))),
        _record("fewlabel-probe", "probe", runs(base_mrr, extra={KSHOT_METRIC: kshot}), uses_labels=True),
        _record(
            "fewlabel-simskip",
            "simskip",
            runs(base_mrr, extra={KSHOT_METRIC: kshot_better}),
            uses_labels=True,
        ),
    ]
    return summarize_task("kg/toy", "mrr", records, bootstrap=PairedBootstrap(n_boot=300, seed=0))


@pytest.fixture(scope="module")
def panels(summary: dict[str, Any]) -> dict[str, Axes]:
    figure = bar_figure(summary)
    assert figure is not None
    return {ax.get_title().split(" ")[0]: ax for ax in figure.axes}


def _names(ax: Axes) -> list[str]:
    return [label.get_text() for label in ax.get_yticklabels()]


def _bars(ax: Axes) -> list[Rectangle]:
    return [patch for patch in ax.patches if isinstance(patch, Rectangle)]


def _intervals(ax: Axes) -> dict[str, tuple[float, float]]:
    """Row name -> (low, high) of the panel's whiskers."""
    containers = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    out: dict[str, tuple[float, float]] = {}
    names = _names(ax)
    for container in containers:
        (segments,) = [collection.get_segments() for collection in container.lines[2]]
        for segment in segments:
            (x0, y0), (x1, _) = segment
            out[names[round(y0)]] = (float(x0), float(x1))
    return out


def test_the_panels_are_the_primary_the_kshot_and_the_other_metric(panels: dict[str, Axes]) -> None:
    assert list(panels) == ["mrr", KSHOT_METRIC, "hits10"]


@pytest.mark.parametrize("metric", ["mrr", "hits10", KSHOT_METRIC])
def test_every_bar_axis_starts_at_zero(panels: dict[str, Axes], metric: str) -> None:
    """mrr near 0.33 and hits10 near 0.96 are drawn from 0, not from just below their smallest value."""
    ax = panels[metric]
    assert ax.get_xlim()[0] == 0.0
    assert all(bar.get_x() == 0.0 for bar in _bars(ax))


def test_the_legend_holds_the_method_families(panels: dict[str, Axes]) -> None:
    figure = next(iter(panels.values())).figure
    (legend,) = figure.legends
    texts = [t.get_text() for t in legend.get_texts()]
    for group in ("baseline", "simskip", "control", "domain method", "label-using"):
        assert group in texts
    for mark in ("win", "tie", "loss", "identity", "k-shot probe"):
        assert mark in texts


def test_bars_are_coloured_and_hatched_by_family_group(panels: dict[str, Axes]) -> None:
    ax = panels["mrr"]
    by_name = dict(zip(_names(ax), _bars(ax)))
    assert by_name["identity+relation-refit"].get_facecolor() != by_name["simskip-ntxent"].get_facecolor()
    assert by_name["fewlabel-simskip"].get_hatch() == "//"
    assert not by_name["simskip-ntxent"].get_hatch()


@pytest.mark.parametrize("metric", ["mrr", KSHOT_METRIC])
def test_whiskers_are_the_bootstrap_intervals_of_the_verdicts(
    summary: dict[str, Any], panels: dict[str, Axes], metric: str
) -> None:
    """Whiskers span reference mean + the comparison's [ci_low, ci_high], for every compared row."""
    whiskers = _intervals(panels[metric])
    expected = {
        name: verdict_interval(summary, name, metric)
        for name, row in summary["rows"].items()
        if metric in row["metrics"]
    }
    expected_spans = {n: (v.low, v.high) for n, v in expected.items() if v is not None}
    assert set(whiskers) == set(expected_spans) and expected_spans  # the references have none
    key = "vs_fewlabel_probe" if metric == KSHOT_METRIC else "vs_identity"
    for name, (low, high) in whiskers.items():
        c = summary["rows"][name]["comparisons"][key]
        ref = summary["rows"][c["reference"]]["metrics"][metric]["mean"]
        assert low == pytest.approx(ref + c["ci_low"], abs=1e-12)
        assert high == pytest.approx(ref + c["ci_high"], abs=1e-12)
    changed = "simskip-ntxent" if metric == "mrr" else "fewlabel-simskip"
    low, high = whiskers[changed]
    assert high > low  # one seed: a seed std would be 0, the bootstrap interval is not


def test_a_metric_the_verdicts_do_not_test_has_no_whiskers(panels: dict[str, Axes]) -> None:
    assert _intervals(panels["hits10"]) == {}
    assert "no interval" in panels["hits10"].get_title()


def test_outcome_marks_follow_the_verdicts(summary: dict[str, Any], panels: dict[str, Axes]) -> None:
    for metric, key in (("mrr", "vs_identity"), (KSHOT_METRIC, "vs_fewlabel_probe")):
        ax = panels[metric]
        names = _names(ax)
        marked: dict[str, str] = {}
        for line in ax.lines:
            gid = line.get_gid() or ""
            if gid.startswith("outcome-"):
                marked |= {
                    names[round(y)]: gid.removeprefix("outcome-") for y in np.asarray(line.get_ydata())
                }
        expected = {
            name: row["comparisons"][key]["outcome"]
            for name, row in summary["rows"].items()
            if key in row["comparisons"] and metric in row["metrics"]
        }
        assert marked == expected
    outcomes = {
        n: r["comparisons"]["vs_identity"]["outcome"] for n, r in summary["rows"].items() if n != "identity"
    }
    assert outcomes["simskip-ntxent"] == "win" and outcomes["whitening"] == "loss"  # the fixture has both


def test_the_kshot_panel_has_the_kshot_probe_as_reference_line(
    summary: dict[str, Any], panels: dict[str, Axes]
) -> None:
    ax = panels[KSHOT_METRIC]
    (line,) = [x for x in ax.lines if x.get_gid() == "reference-fewlabel-probe"]
    assert (
        np.asarray(line.get_xdata())[0] == summary["rows"]["fewlabel-probe"]["metrics"][KSHOT_METRIC]["mean"]
    )
    assert ax.get_xlim()[0] == 0.0
    (identity,) = [x for x in panels["mrr"].lines if x.get_gid() == "reference-identity"]
    assert np.asarray(identity.get_xdata())[0] == summary["rows"]["identity"]["metrics"]["mrr"]["mean"]


def test_a_metric_with_negative_values_keeps_zero_in_view(summary: dict[str, Any]) -> None:
    negative = {
        **summary,
        "rows": {
            name: {**row, "metrics": {"mrr": {"mean": -0.2 if name == "whitening" else 0.3, "std": 0.0}}}
            for name, row in summary["rows"].items()
        },
    }
    figure = bar_figure(negative)
    assert figure is not None
    left, right = figure.axes[0].get_xlim()
    assert left < -0.2 and right > 0.3


def _projection(path: Path, n: int, labelled: bool, classes: int = 3) -> Path:
    rng = np.random.default_rng(n)
    labels = np.arange(n) % classes if labelled else np.full(n, -1)
    np.savez(
        path,
        before=rng.normal(size=(n, 2)).astype(np.float32),
        after=rng.normal(size=(n, 2)).astype(np.float32),
        labels=labels.astype(np.int64),
        mean_shift=np.asarray(0.1),
        seed=np.asarray(0),
        method=np.asarray("simskip-ntxent"),
    )
    return path


def test_a_labelled_projection_has_a_class_legend(tmp_path: Path) -> None:
    figure = projection_figure(_projection(tmp_path / "p.npz", 90, labelled=True), "text/toy")
    assert figure is not None
    (legend,) = figure.legends
    assert legend.get_title().get_text() == "class"
    assert [t.get_text() for t in legend.get_texts()] == ["0", "1", "2"]


def test_many_classes_are_counted_in_the_legend(tmp_path: Path) -> None:
    figure = projection_figure(_projection(tmp_path / "p.npz", 200, labelled=True, classes=40), "text/toy")
    assert figure is not None
    texts = [t.get_text() for t in figure.legends[0].get_texts()]
    assert len(texts) == 20 and texts[-1] == "+21 more classes"


@pytest.mark.parametrize(
    ("n", "labelled"), [(14, False), (MIN_PROJECTION_POINTS - 1, True), (MIN_PROJECTION_POINTS + 10, False)]
)
def test_no_projection_where_it_says_nothing(tmp_path: Path, n: int, labelled: bool) -> None:
    """14 unlabelled points (the KG case), too few labelled points, or no labels: no figure, no file."""
    assert projection_figure(_projection(tmp_path / "p.npz", n, labelled), "kg/toy") is None
    (tmp_path / "projections").mkdir()
    _projection(tmp_path / "projections" / "kg__toy.npz", n, labelled)
    statuses = [{"task": "kg/toy", "domain": "kg", "status": "ok"}]
    written = write_plots(tmp_path, [], statuses)
    assert not any(key.startswith("projection:") for key in written)
    assert not (tmp_path / "plots" / "projection-kg.png").exists()


def test_write_plots_writes_the_bars_and_a_labelled_projection(
    tmp_path: Path, summary: dict[str, Any]
) -> None:
    (tmp_path / "projections").mkdir()
    _projection(tmp_path / "projections" / "kg__toy.npz", 80, labelled=True)
    written = write_plots(tmp_path, [summary], [{"task": "kg/toy", "domain": "kg", "status": "ok"}])
    assert set(written) == {"bars:kg/toy", "projection:kg"}
    for path in written.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
