"""The quick start of docs/kg.md runs offline as written: trains TransE on Nations, refines it, saves and reloads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "kg.md"


def quick_start() -> str:
    section = DOC.read_text(encoding="utf-8").split("## Quick start", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert match, "docs/kg.md's Quick start section must hold a python code block"
    return match.group(1)


@pytest.mark.slow
def test_quick_start_runs_and_prints_the_table(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYSTOW_HOME", str(tmp_path / "pystow"))  # PyKEEN unpacks Nations here
    namespace: dict[str, object] = {"__name__": "__docs__"}
    exec(compile(quick_start(), str(DOC), "exec"), namespace)
    out = capsys.readouterr().out
    for row in (
        "raw ",
        "raw + relation re-fit",
        "refined ",
        "refined + relation re-fit",
        "reloaded the refined model",
    ):
        assert row in out
    table = namespace["table"]
    assert list(table.index) == ["raw", "raw + relation re-fit", "refined", "refined + relation re-fit"]
    # the documented table matches this run (same seeds; a tolerance for other torch builds)
    documented = DOC.read_text(encoding="utf-8").split("The table (numbers from", 1)[1].split("```")[1]
    for name in table.index:
        line = next(line for line in documented.splitlines() if line.startswith(name + "  "))
        documented_mrr = float(line[len(name) :].split()[0])
        assert abs(documented_mrr - table.loc[name, "mrr"]) < 0.01, (name, line, table.loc[name, "mrr"])
    assert (tmp_path / "refined-transe.safetensors").is_file()
