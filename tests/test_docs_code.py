"""Every Python block of docs/ runs as written, offline, in an empty folder.

A page is one session, like a reader following it: its blocks run in order in one fresh interpreter,
so a later block may use what an earlier one made. What a page assumes the reader already has (a
file of embeddings, a saved model) is made by a hidden setup block written on the page itself, right
before the block that needs it::

    <!-- test-setup
    import numpy as np; np.save("emb.npy", ...)
    -->

so the assumption is visible to anyone editing the page. docs/hooks.md's blocks run in
tests/test_hookspecs.py; the README's blocks are the docs' blocks (tests/test_readme.py) or its quick
start (run there too). A block that cannot run here at all (it needs a service the machine lacks) must
say why in a ``<!-- not-run: reason -->`` comment right before it; there is none today.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_PAGES = {"hooks.md"}  # run by tests/test_hookspecs.py::test_hooks_md_code_blocks_run
_PIECE = re.compile(
    r"<!-- test-setup\n(?P<setup>.*?)-->|<!-- not-run: (?P<reason>.*?) -->\s*```python\n.*?```|"
    r"^(?P<indent>[ \t]*)```python\n(?P<code>.*?)^(?P=indent)```",
    re.S | re.M,
)


def page_script(page: Path) -> tuple[str, int]:
    """The page's setup and code blocks in order, as one script, and the number of code blocks."""
    parts, blocks = [], 0
    for match in _PIECE.finditer(page.read_text(encoding="utf-8")):
        if match.group("setup") is not None:
            parts.append(match.group("setup"))
        elif match.group("code") is not None:
            indent = match.group("indent")
            code = "".join(line[len(indent) :] for line in match.group("code").splitlines(keepends=True))
            parts.append(code)
            blocks += 1
    return "\n".join(parts), blocks


def _pages() -> list[Path]:
    return [
        p for p in sorted((ROOT / "docs").glob("*.md")) if p.name not in SKIP_PAGES and page_script(p)[1] > 0
    ]


def test_page_script_reads_setup_indented_and_not_run_blocks() -> None:
    text = (
        "intro\n<!-- test-setup\nx = 1\n-->\n```python\ny = x + 1\n```\n"
        "* item:\n\n  ```python\n  z = y + 1\n  ```\n"
        "<!-- not-run: needs a cluster -->\n```python\nraise SystemExit(1)\n```\n"
    )
    page = Path(os.environ.get("TMPDIR", "/tmp")) / "simskip-docs-test-page.md"
    page.write_text(text)
    script, blocks = page_script(page)
    assert blocks == 2 and "raise" not in script
    namespace: dict[str, int] = {}
    exec(script, namespace)
    assert namespace["z"] == 3


def test_no_block_is_left_unrun_without_a_reason() -> None:
    for page in _pages():
        for reason in re.findall(r"<!-- not-run: (.*?) -->", page.read_text(encoding="utf-8")):
            assert len(reason.split()) >= 3, f"{page.name}: a not-run block needs a real reason"


@pytest.mark.slow
@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.name)
def test_docs_page_runs(page: Path, tmp_path: Path) -> None:
    script, _ = page_script(page)
    path = tmp_path / f"{page.stem}.py"
    path.write_text(script, encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1"}
    env["SIMSKIP_CACHE_DIR"] = str(tmp_path / "cache")
    out = subprocess.run(
        [sys.executable, str(path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200
    )
    assert out.returncode == 0, f"docs/{page.name} failed:\n{out.stderr[-3000:]}"
