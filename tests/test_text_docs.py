"""The quick start of docs/text.md runs offline as written (real model, real data)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "text.md"


def quick_start() -> str:
    section = DOC.read_text(encoding="utf-8").split("## Quick start", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert match, "docs/text.md's Quick start section must hold a python code block"
    return match.group(1)


@pytest.mark.slow
def test_quick_start_runs_and_reloads_identically(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(quick_start(), str(DOC), "exec"), {"__name__": "__docs__"})
    out = capsys.readouterr().out
    assert "SimSkipStage" in out and "(2, 384)" in out and "identical embeddings" in out
    assert "reloads with plain SentenceTransformer" in out
    assert "SimSkipStage" not in (tmp_path / "my-refined-model" / "modules.json").read_text()
    assert "SimSkipStage" in (tmp_path / "my-refined-stage" / "modules.json").read_text()
    assert list((tmp_path / "simskip-cache" / "text-embeddings").glob("*.npz"))


@pytest.mark.slow
def test_portable_export_example_runs(tmp_path, monkeypatch, capsys):
    section = DOC.read_text(encoding="utf-8").split("## A refined model anyone can load", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert code, "the portable export section must hold a python code block"
    monkeypatch.chdir(tmp_path)
    exec(compile(code.group(1), str(DOC), "exec"), {"__name__": "__docs__"})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "True" and lines[1].startswith("simskip/all-MiniLM-L6-v2-simskip-")
    modules = (tmp_path / "portable-model" / "modules.json").read_text()
    assert "SimSkipStage" not in modules and "sentence_transformers.base.modules.dense.Dense" in modules
