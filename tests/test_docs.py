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


def test_dyvedeep_page_runs(run_snippet, prepared) -> None:  # type: ignore[no-untyped-def]
    prepared("cifar10-jpeg")  # the snippet calibrates on 500 val images from the cache
    text = (DOCS / "methods" / "dyvedeep.md").read_text()
    out = run_snippet("\n".join(re.findall(r"```python\n(.*?)```", text, flags=re.S)))
    fractions = [float(v) for v in re.findall(r"\d\.\d+", out)]
    assert len(fractions) == 4
    assert all(0.1 < f < 1.0 for f in fractions), out


def test_d2nn_page_runs(run_snippet) -> None:  # type: ignore[no-untyped-def]
    text = (DOCS / "methods" / "d2nn.md").read_text()
    out = run_snippet("\n".join(re.findall(r"```python\n(.*?)```", text, flags=re.S)))
    assert out.startswith("executed [")
    costs = [float(v) for v in re.findall(r"\d+\.\d+", out)]
    assert len(costs) == 4
    assert all(c > 0 for c in costs)
