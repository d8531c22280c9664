"""Code in the docs runs as written: docs/extending.md builds and checks a mechanism."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_extending_guide_runs(run_snippet) -> None:  # type: ignore[no-untyped-def]
    text = (DOCS / "extending.md").read_text()
    out = run_snippet("\n".join(re.findall(r"```python\n(.*?)```", text, flags=re.S)))
    assert "contract passed" in out
    assert "(executed)" in out
