"""Auto mode's selection: labels serve the probe only (no leak), bounded probe rows, extra candidates,
the refusal without a probe, row-normalising probes and the per-candidate report."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from simskip_core import SimSkip, api
from simskip_core.api import NO_PROBE_MESSAGE, RowNormalized
from simskip_core.apply import apply_module
from simskip_core.bench.report import _write_results_csv, add_best_row_comparisons, auto_row, auto_summary
from simskip_core.bench.stats import MethodRecord, PairedBootstrap, summarize_task
from simskip_core.selection import LabelProbe, select_candidate, split_labels
from simskip_core.tasks import ItemScores

FAST = {"epochs": 3, "batch_size": 64, "progress": False}


class LabelMemoriser(nn.Module):
    """A label-using candidate that memorises its training labels: it appends 10 x one-hot of the label of
    the nearest training row. On its own training rows it is perfect; elsewhere it guesses."""

    def __init__(self, x: np.ndarray, labels: np.ndarray) -> None:
        super().__init__()
        keep = labels >= 0
        self.register_buffer("rows", torch.from_numpy(x[keep]))
        self.register_buffer("labels", torch.from_numpy(labels[keep]))
        self.classes = int(labels.max()) + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nearest = torch.cdist(x, self.rows).argmin(dim=1)
        onehot = nn.functional.one_hot(self.labels[nearest], self.classes).float()
        return torch.cat([x, 10.0 * onehot], dim=1)


def _noise_with_random_labels(n: int = 400, d: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, d)).astype(np.float32), rng.integers(0, 2, n)


def test_a_leaky_probe_prefers_a_memoriser_and_split_labels_do_not() -> None:
    x, y = _noise_with_random_labels()
    leaky = LabelMemoriser(x, y)  # trained on the very labels that score it
    report = select_candidate({"identity": x, "memoriser": apply_module(leaky, x)}, LabelProbe(y))
    assert report["chosen"] == "memoriser"
    train, score = split_labels(y, 0.5, seed=0)
    assert not np.any((train >= 0) & (score >= 0))
    assert (train >= 0).sum() + (score >= 0).sum() == len(y)
    honest = LabelMemoriser(x, train)
    model = SimSkip(**FAST, mode="auto").fit(x, labels=score, candidates={"memoriser": honest})
    assert model.chosen == "identity", model.selection_["reason"]
    assert model.selection_["candidates"]["memoriser"]["mean"] < 0.6


def test_auto_mode_labels_serve_the_probe_only(blobs) -> None:
    x, y = blobs
    labels = np.where(np.arange(len(y)) % 3 == 0, y, -1)
    auto = SimSkip(**FAST, mode="auto").fit(x, labels=labels)
    free = SimSkip(**FAST).fit(x)
    for (name, a), b in zip(auto.refiner_.state_dict().items(), free.refiner_.state_dict().values()):
        assert torch.equal(a, b), name  # the refiner never saw a label
    assert auto.signals_ == [] and auto.uses_labels
    assert any("probe only" in note for note in auto.fit_notes_)


def test_refine_mode_still_trains_with_labels(blobs) -> None:
    x, y = blobs
    assert SimSkip(**FAST).fit(x, labels=y).signals_ == ["labels"]


def test_label_probe_reads_a_bounded_stratified_sample() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 20_000)
    probe = LabelProbe(y, max_rows=300)
    assert 290 <= len(probe.rows) <= 310
    assert set(np.unique(y[probe.rows])) == {0, 1, 2, 3}
    z = rng.normal(size=(len(y), 4)).astype(np.float32)
    assert probe(z, 0) == probe(z[probe.rows], 0)  # full rows or only the probe's rows
    with pytest.raises(ValueError, match=r"LabelProbe\.rows"):
        probe(z[:10], 0)


def test_auto_mode_applies_candidates_to_the_probe_rows_only() -> None:
    x, y = _noise_with_random_labels(n=3000, d=8)
    seen: list[int] = []

    class Counting(LabelProbe):
        def __call__(self, z: np.ndarray, split_seed: int) -> float:
            seen.append(z.shape[0])
            return super().__call__(z, split_seed)

    probe = Counting(y, max_rows=200)
    model = SimSkip(**FAST, mode="auto").fit(x, probe=probe)
    assert set(seen) == {len(probe.rows)}
    assert model.selection_["rows_scored"] == len(probe.rows) < 250


def test_blends_scored_from_the_refiner_output_equal_the_blend_maps(blobs) -> None:
    x, _ = blobs
    scored: list[np.ndarray] = []

    def probe(z: np.ndarray, seed: int) -> float:
        scored.append(z)
        return 0.5

    model = SimSkip(**FAST, mode="auto").fit(x, probe=probe)
    maps = model.candidate_maps(x)
    vectors = scored[:: model.n_splits]  # each candidate is scored on n_splits splits in a row
    assert len(vectors) == len(maps)
    for vector, (name, module) in zip(vectors, maps.items()):
        np.testing.assert_allclose(vector, apply_module(module, x), atol=1e-5, err_msg=name)


def test_extra_candidates_are_scored_and_can_win(tmp_path) -> None:
    x, y = _noise_with_random_labels()
    model = SimSkip(**FAST, mode="auto").fit(x, labels=y, candidates={"memoriser": LabelMemoriser(x, y)})
    assert model.chosen == "memoriser"  # leaky on purpose: the same labels train and score it
    with pytest.raises(TypeError, match="only the core's candidate maps"):
        model.save(tmp_path / "m")
    with pytest.raises(ValueError, match="clashes"):
        SimSkip(**FAST, mode="auto").fit(x, labels=y, candidates={"whitening": nn.Identity()})
    with pytest.raises(ValueError, match="auto mode only"):
        SimSkip(**FAST).fit(x, candidates={"other": nn.Identity()})


def test_auto_mode_without_labels_or_probe_refuses_and_says_why(blobs) -> None:
    x, _ = blobs
    with pytest.raises(ValueError) as error:
        SimSkip(**FAST, mode="auto").fit(x)
    message = str(error.value)
    assert message == NO_PROBE_MESSAGE and "\n" not in message
    assert "label-free-selection.md" in message and "labels=" in message and "probe=" in message


def test_a_row_normalising_probe_gets_normalised_candidates_and_transform_returns_them(
    blobs, tmp_path
) -> None:
    x, y = blobs
    scored: list[np.ndarray] = []

    class NormalisingProbe(LabelProbe):
        row_normalize = True

        def __call__(self, z: np.ndarray, split_seed: int) -> float:
            scored.append(z)
            return super().__call__(z, split_seed)

    model = SimSkip(**FAST, mode="auto").fit(x, probe=NormalisingProbe(y, max_rows=None))
    out = model.transform(x)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert isinstance(model.module_, RowNormalized)
    assert any(np.array_equal(out, z) for z in scored)  # exactly a scored matrix
    model.save(tmp_path / "m")
    assert np.array_equal(SimSkip.load(tmp_path / "m").transform(x), out)


def test_baseline_candidates_are_fitted_on_a_bounded_sample(blobs, monkeypatch) -> None:
    x, _ = blobs
    model = SimSkip(**FAST).fit(x)
    full = model.candidate_maps(x)["centerl2"].mean.clone()
    monkeypatch.setattr(api, "BASELINE_FIT_ROWS", 50)
    sampled = model.candidate_maps(x)["centerl2"].mean
    rows = np.sort(np.random.default_rng(model.seed).choice(len(x), size=50, replace=False))
    np.testing.assert_allclose(sampled.numpy(), x[rows].astype(np.float64).mean(0), rtol=1e-6)
    assert not torch.allclose(sampled, full)


def test_selection_report_lists_every_candidate_with_mean_and_noise(blobs) -> None:
    x, y = blobs
    model = SimSkip(**FAST, mode="auto").fit(x, labels=y)
    table = model.selection_["candidates"]
    assert set(table) == set(model.candidate_maps(x))
    for row in table.values():
        assert {"mean", "std", "gain", "noise", "scores"} <= set(row)
        assert row["noise"] >= 0 and len(row["scores"]) == model.n_splits


def test_cost_benchmark_runs_at_a_small_size(capsys) -> None:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_auto_cost.py"
    spec = importlib.util.spec_from_file_location("bench_auto_cost", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        (result,) = bench.main(["--sizes", "600", "--dim", "8", "--epochs", "1"])
    finally:
        torch.set_num_threads(threads)
    assert result["rows"] == 600 and result["auto"]["rows_scored"] <= 600
    assert result["ratio_vs_refine_labels"] > 0 and result["ratio_vs_refine"] > 0
    assert "auto / refine+labels" in capsys.readouterr().out


def _record(name: str, family: str, correct: np.ndarray, *, uses_labels: bool = False) -> MethodRecord:
    record = MethodRecord(name, family, uses_labels)
    record.metrics[None] = {"acc": float(correct.mean())}
    record.items[None] = {"acc": ItemScores("mean", correct.astype(np.float64))}
    return record


def test_report_compares_every_row_with_the_best_row_and_states_the_auto_line(tmp_path) -> None:
    rng = np.random.default_rng(0)
    base = (rng.random(400) < 0.6).astype(float)
    better = np.where(rng.random(400) < 0.5, 1.0, base)  # ~0.8: the best row
    worse = np.where(rng.random(400) < 0.5, 0.0, base)  # ~0.3
    records = [
        _record("identity", "baseline", base),
        _record("sgc-propagation", "baseline", better),
        _record("simskip-auto", "simskip", base),
        _record("simskip-auto-graph", "simskip", worse),
    ]
    bootstrap = PairedBootstrap(n_boot=200, seed=0)
    summary = summarize_task("t", "acc", records, bootstrap=bootstrap)
    add_best_row_comparisons(summary, records, bootstrap)
    rows = summary["rows"]
    assert rows["sgc-propagation"]["best_row"]["acc"]["outcome"] == "best"
    versus = rows["identity"]["best_row"]["acc"]
    assert versus["reference"] == "sgc-propagation" and versus["outcome"] == "loss"
    assert versus["ci_low"] <= versus["diff"] <= versus["ci_high"] < 0
    assert auto_row(summary) == "simskip-auto-graph"  # the domain's row, chosen by name, not by score
    auto = auto_summary([summary])
    assert (
        auto["line"]
        == "auto within noise of the best row on 0 of 1 tasks; significantly worse than identity on 1"
    )
    _write_results_csv(tmp_path / "results.csv", [summary], [{"task": "t", "domain": "graph"}])
    with open(tmp_path / "results.csv", encoding="utf-8") as handle:
        table = {row["method"]: row for row in csv.DictReader(handle)}
    assert table["identity"]["best_row_reference"] == "sgc-propagation"
    assert table["identity"]["outcome_vs_best_row"] == "loss"
    assert float(table["identity"]["diff_vs_best_row"]) < 0
    assert table["sgc-propagation"]["outcome_vs_best_row"] == "best"
    assert {"ci_low_vs_best_row", "ci_high_vs_best_row"} <= set(table["identity"])


def test_select_runs_auto_modes_selection_on_a_trained_refiner() -> None:
    from simskip_core.api import SimSkip

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    labels = (x[:, 0] > 0).astype(int)
    model = SimSkip(epochs=2, batch_size=64, progress=False).fit(x)
    weights = {k: v.clone() for k, v in model.refiner_.state_dict().items()}
    with pytest.raises(ValueError, match="needs a probe"):
        model.select(x)
    model.select(x, labels=labels)
    assert model.selection_ is not None and model.chosen in model.selection_["candidates"]
    assert all(torch.equal(weights[k], v) for k, v in model.refiner_.state_dict().items())  # nothing trained
    with pytest.raises(RuntimeError, match="fit"):
        SimSkip().select(x, labels=labels)
