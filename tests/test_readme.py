"""The README's user-path sections carry the same code as the docs pages whose tests run it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {
    "## Refine a sentence-transformers model": "docs/text.md",
    "## Post-process PyKEEN embeddings": "docs/kg.md",
    "## Refine node embeddings": "docs/graph.md",
    "## Refine timm image features": "docs/vision.md",
}


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end != -1 else None]


@pytest.mark.parametrize(("heading", "page"), SECTIONS.items())
def test_readme_section_code_is_the_tested_docs_code(heading: str, page: str) -> None:
    readme = (ROOT / "README.md").read_text()
    assert heading in readme, f"README lacks the section {heading!r}"
    blocks = _python_blocks(_section(readme, heading))
    assert blocks, f"README section {heading!r} has no Python example"
    docs_blocks = _python_blocks((ROOT / page).read_text())
    for block in blocks:
        assert block in docs_blocks, f"the example under {heading!r} differs from the tested one in {page}"


def test_readme_gives_the_two_fresh_machine_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/setup.sh && HF_HUB_OFFLINE=1 .venv/bin/simskip bench --suite quick" in readme
    assert "bash scripts/setup.sh && .venv/bin/python -m pytest" in readme
    assert ".venv/bin/python -m pytest" in (ROOT / ".ci" / "run").read_text()


def test_readme_quick_start_runs_as_written_in_an_empty_folder(tmp_path: Path) -> None:
    import subprocess
    import sys

    readme = (ROOT / "README.md").read_text()
    (block,) = _python_blocks(_section(readme, "## Quick start (Python)"))
    script = tmp_path / "quick_start.py"
    script.write_text(block)
    out = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "my-refiner" / "model.safetensors").is_file()
    chosen = out.stdout.split()[0]
    assert chosen in {"identity", "simskip", "centerl2", "whitening", "allbutthetop"} or chosen.startswith(
        "simskip@"
    )
