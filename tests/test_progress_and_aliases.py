"""Progress bars honour TQDM_DISABLE and non-terminals; old module paths still import, with a warning."""

from __future__ import annotations

import subprocess
import sys

import pytest

from simskip_core.progress import bar_disabled


def test_bar_disabled_honours_the_flag_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert bar_disabled(False) is True
    assert bar_disabled(True) is None  # tqdm decides: shown on a terminal only
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert bar_disabled(True) is True
    monkeypatch.setenv("TQDM_DISABLE", "0")
    assert bar_disabled(True) is None


def test_a_bar_with_none_stays_out_of_output_that_is_not_a_terminal() -> None:
    code = (
        "import io; from tqdm.auto import tqdm; from simskip_core.progress import bar_disabled\n"
        "buf = io.StringIO()\n"
        "for _ in tqdm(range(3), file=buf, disable=bar_disabled(True)): pass\n"
        "print(repr(buf.getvalue()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "''"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("simskip_core.stream", "simskip_core.scale.stream"),
        ("simskip_core.distributed", "simskip_core.scale.distributed"),
        ("simskip_core.report", "simskip_core.bench.report"),
        ("simskip_core.select", "simskip_core.selection"),
        ("simskip_core.stats", "simskip_core.bench.stats"),
        ("simskip_core.methods", "simskip_core.bench.methods"),
    ],
)
def test_old_module_paths_are_deprecated_aliases(old: str, new: str) -> None:
    code = (
        "import importlib, sys, warnings\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        f"    old = importlib.import_module({old!r})\n"
        f"new = importlib.import_module({new!r})\n"
        "assert old is new, (old, new)\n"
        "print(sum(issubclass(w.category, DeprecationWarning) and 'moved to' in str(w.message) for w in caught))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) >= 1


def test_the_bench_package_keeps_its_public_names() -> None:
    import simskip_core.bench as bench

    for name in bench.__all__:
        assert getattr(bench, name) is not None
