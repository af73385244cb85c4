"""The bench's fit memo: no (task, seed) cell trains the same refiner twice, and reuse changes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_bench_runner import DEFAULTS, SyntheticPlugin, _blobs, _config, plugin  # noqa: F401

import simskip_core.api as api
from simskip_core.api import SimSkip
from simskip_core.bench import methods as bench_methods
from simskip_core.bench import run_bench
from simskip_core.bench.methods import FitMemo, core_methods, simskip_kwargs
from simskip_core.selection import LabelProbe
from simskip_core.tasks import Task


@pytest.fixture
def trainings(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts every refiner training (``fit_refiner`` calls inside ``SimSkip.fit``)."""
    calls: list[int] = []
    real = api.fit_refiner

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "fit_refiner", counting)
    return calls


def _task() -> Task:
    return Task(
        name="synthetic/memo",
        domain="synthetic",
        description="blobs",
        source="generated",
        load=lambda options: _blobs(),
        primary_metric="knn5_acc",
        metrics=("knn5_acc",),
        defaults=DEFAULTS,
        default_probe=lambda data: LabelProbe(data.train.labels),
    )


def _method(name: str) -> Any:
    return next(m for m in core_methods() if m.name == name)


def test_a_second_identical_fit_is_not_run(trainings: list[int]) -> None:
    data = _blobs()
    memo = FitMemo()
    kwargs = simskip_kwargs(_task(), loss="ntxent")
    first, reused = memo.fit(kwargs, 0, data.train.vectors)
    again, reused_again = memo.fit(dict(kwargs), 0, data.train.vectors.copy())
    assert (reused, reused_again) == (False, True) and again is first
    assert len(trainings) == 1 and memo.fits == 1 and memo.reused == 1
    memo.fit(kwargs, 1, data.train.vectors)  # another seed
    memo.fit({**kwargs, "epochs": 3}, 0, data.train.vectors)  # another configuration
    memo.fit(kwargs, 0, data.train.vectors + 1.0)  # other data
    memo.fit(kwargs, 0, data.train.vectors, labels=data.train.labels)  # other signals
    assert len(trainings) == 5 and memo.fits == 5


def test_auto_reuses_the_ntxent_refiner_and_equals_an_unmemoised_fit(trainings: list[int]) -> None:
    task, data = _task(), _blobs()
    state: dict[str, Any] = {}
    ntxent = _method("simskip-ntxent").run(task, data, 0, state)
    auto = _method("simskip-auto").run(task, data, 0, state)
    assert len(trainings) == 1  # the auto row trained nothing
    assert auto.info["refiner_reused"] is True

    probe = LabelProbe(data.train.labels)
    fresh = SimSkip(**simskip_kwargs(task), seed=0, mode="auto", probe=probe, progress=False)
    fresh.fit(data.train.vectors)
    assert len(trainings) == 2
    assert auto.info["chosen"] == fresh.chosen
    assert auto.info["selection_reason"] == fresh.selection_["reason"]
    assert np.array_equal(auto.train, fresh.transform(data.train.vectors))
    assert np.array_equal(auto.test, fresh.transform(data.test.vectors))
    refined = SimSkip(**simskip_kwargs(task, loss="ntxent"), seed=0, progress=False).fit(data.train.vectors)
    assert np.array_equal(ntxent.test, refined.transform(data.test.vectors))


def test_without_a_selection_step_auto_fits_in_full(
    trainings: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench_methods, "AUTO_FROM_REFINED", None)
    task, data = _task(), _blobs()
    state: dict[str, Any] = {}
    _method("simskip-ntxent").run(task, data, 0, state)
    auto = _method("simskip-auto").run(task, data, 0, state)
    assert len(trainings) == 2 and auto.info["refiner_reused"] is False


def test_bench_trains_one_refiner_per_seed_with_the_same_metrics(
    plugin: SyntheticPlugin,  # noqa: F811
    tmp_path: Path,
    trainings: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    methods = ("simskip-ntxent", "random-residual", "simskip-auto")
    kwargs: dict[str, Any] = {"tasks": ("synthetic/blobs",), "methods": methods, "plots": False}
    memoised = run_bench(_config(tmp_path, out=tmp_path / "memo", **kwargs))
    assert memoised.failures == 0 and len(trainings) == 2  # seeds 0 and 1: one refiner each

    class NoMemo(FitMemo):
        def fit(self, kwargs: Any, seed: int, x: np.ndarray, **signals: Any) -> tuple[SimSkip, bool]:
            model = SimSkip(**{**kwargs, "mode": "refine"}, seed=seed, progress=False)
            return model.fit(x, **signals), False

    monkeypatch.setattr(bench_methods, "FitMemo", NoMemo)
    monkeypatch.setattr(bench_methods, "AUTO_FROM_REFINED", None)
    plain = run_bench(_config(tmp_path, out=tmp_path / "plain", **kwargs))
    assert len(trainings) == 2 + 4  # unmemoised: the auto row trains its refiner again

    def metrics(result: Any) -> dict[tuple[str, Any], dict[str, float]]:
        return {(c["method"], c["seed"]): c["metrics"] for c in result.run["cells"]}

    assert metrics(memoised) == metrics(plain)


def test_fit_memo_lives_in_the_cell_state() -> None:
    state: dict[str, Any] = {}
    memo = bench_methods.fit_memo(state)
    assert bench_methods.fit_memo(state) is memo and state["fit_memo"] is memo
