"""Memory stays bounded: memmaps are read in blocks, never copied whole; read-only arrays are used as they are.

tracemalloc sees numpy's allocations (numpy reports them to it), not torch's, so a copy of the input
made anywhere through numpy shows up in the traced peak.
"""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest

from simskip_core import SimSkip

MB = 1 << 20


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """A 200,000 x 64 float32 .npy file (51 MB), opened as a memmap by the tests."""
    path = tmp_path_factory.mktemp("memmap") / "x.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(200_000, 64))
    rng = np.random.default_rng(0)
    for start in range(0, len(out), 50_000):
        out[start : start + 50_000] = rng.normal(size=(50_000, 64))
    out.flush()
    del out
    return path


def _traced_peak(fn) -> tuple[object, int]:
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_transform_of_a_memmap_allocates_only_the_output(big) -> None:
    x = np.load(big, mmap_mode="r")
    model = SimSkip(epochs=1, batch_size=64, progress=False).fit(np.asarray(x[:500]))
    out, peak = _traced_peak(lambda: model.transform(x))
    output = x.shape[0] * x.shape[1] * 4
    assert peak < output + 8 * MB, f"traced peak {peak / MB:.1f} MB for a {output / MB:.1f} MB output"
    assert np.array_equal(out[:500], model.transform(np.asarray(x[:500])))


def test_fit_on_a_memmap_keeps_it_lazy(big) -> None:
    x = np.load(big, mmap_mode="r")  # 51 MB
    options = {"epochs": 1, "batch_size": 512, "augment_fit_rows": 2048, "patience": None, "progress": False}
    SimSkip(**options).fit(np.asarray(x[:600]))  # first-use imports are not what this test measures
    # 95 % of the rows are held out and a val_score replaces the held-out loss: training reads 10,000 rows
    model = SimSkip(**options, val_fraction=0.95)
    _, peak = _traced_peak(lambda: model.fit(x, val_score=lambda refiner: 0.0))
    assert peak < 12 * MB, f"traced peak {peak / MB:.1f} MB fitting on a {x.nbytes / MB:.1f} MB memmap"
    assert model.dim_ == 64 and len(model.history_) == 1


READ_ONLY = """
import warnings
import numpy as np
from simskip_core import SimSkip

warnings.simplefilter("error")
rng = np.random.default_rng(0)
x = rng.normal(size=(300, 16)).astype(np.float32)
labels = np.repeat(np.arange(3), 100)
frozen = np.frombuffer(x.tobytes(), dtype=np.float32).reshape(x.shape)  # as Arrow hands them over
assert not frozen.flags.writeable
for mode in ("refine", "auto"):
    model = SimSkip(epochs=2, batch_size=64, progress=False, mutual_knn=5, mode=mode)
    model.fit(frozen, labels=labels if mode == "auto" else None)
    assert np.array_equal(model.transform(frozen), model.transform(x))
print("ok")
"""


def test_read_only_arrays_are_accepted_without_warnings() -> None:
    # a fresh interpreter: torch shows its "not writable" warning only once per process
    result = subprocess.run(
        [sys.executable, "-c", READ_ONLY], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


@pytest.mark.parametrize("where", ["fit", "transform"])
def test_values_beyond_float32_are_refused_naming_the_row(blobs, where) -> None:
    x, _ = blobs
    bad = x.astype(np.float64)
    bad[7] = 1e39  # finite as float64, Inf as float32
    model = SimSkip(epochs=1, batch_size=64, progress=False).fit(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow RuntimeWarning either
        with pytest.raises(ValueError, match=r"NaN or Inf.* rows? \[?7"):
            model.fit(bad) if where == "fit" else model.transform(bad)
    with pytest.raises(ValueError, match=r"NaN or Inf.* row 0"):
        model.transform(np.full((4, 16), 1e39))


def test_non_finite_outputs_are_refused(blobs) -> None:
    x, _ = blobs
    model = SimSkip(epochs=1, batch_size=64, progress=False).fit(x)
    last = model.refiner_.g[-1]
    last.weight.data.fill_(1e38)  # g(x) overflows float32
    with pytest.raises(ValueError, match="the refined X is not finite at row 0"):
        model.transform(x)


def test_apply_module_says_which_row_failed_and_where() -> None:
    from torch import nn

    from simskip_core.apply import apply_module
    from simskip_core.errors import NonFiniteRowError

    x = np.zeros((10, 4), dtype=np.float32)
    x[7, 2] = np.nan
    with pytest.raises(NonFiniteRowError, match="row 107") as caught:
        apply_module(nn.Identity(), x, row_offset=100)
    assert caught.value.row == 107 and caught.value.in_input
    x[7, 2] = 0.0
    with pytest.raises(NonFiniteRowError) as caught:
        apply_module(nn.Sequential(nn.Linear(4, 4), nn.Threshold(1e9, float("inf"))), x)
    assert caught.value.row == 0 and not caught.value.in_input
