"""docs/reliability.md names real tests: every ``file::test`` it cites exists, so the table cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_cited_test_exists() -> None:
    text = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    current = None
    cited = 0
    for match in re.finditer(r"`(test_[a-z_]+\.py)::(test_\w+)`|`::(test_\w+)`", text):
        current = match.group(1) or current
        name = match.group(2) or match.group(3)
        assert current is not None
        source = (ROOT / "tests" / current).read_text(encoding="utf-8")
        assert f"def {name}(" in source, f"docs/reliability.md cites {current}::{name}, which does not exist"
        cited += 1
    assert cited > 40
