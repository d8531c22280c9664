"""The README's Python snippets run as written (so the front page cannot rot)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_snippet_runs(code: str, run_snippet, prepared) -> None:  # type: ignore[no-untyped-def]
    prepared("cifar10-jpeg")  # a snippet loads it from the cache
    run_snippet(code)


def test_readme_has_no_placeholders() -> None:
    text = README.read_text()
    assert "DEMO_OUTPUT" not in text
    assert "WEIGHTS_TABLE" not in text
