"""The "Refine node embeddings" section of docs/graph.md runs offline as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "graph.md"


def quick_start() -> str:
    section = DOC.read_text(encoding="utf-8").split("## Refine node embeddings", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert match, "docs/graph.md's 'Refine node embeddings' section must hold a python code block"
    return match.group(1)


@pytest.mark.slow
def test_refine_node_embeddings_section_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(quick_start(), str(DOC), "exec"), {"__name__": "__docs__"})
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    assert "z=[34, 32]" in out
    assert "structure-aware SimSkip  probe accuracy" in out
    assert "reloaded refiner gives identical embeddings: True" in out
    assert (tmp_path / "karate-refiner" / "config.json").is_file()
