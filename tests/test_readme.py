"""The README's Python snippets run as written (so the front page cannot rot)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_snippet_runs(code: str, run_snippet, prepared) -> None:  # type: ignore[no-untyped-def]
    """Each snippet runs, and what it prints is what the library says."""
    import dyve

    prepared("cifar10-jpeg")  # a snippet loads it from the cache
    out = run_snippet(code)
    if "evaluate(" in code:  # the shipped network's test top-1, as its metadata records
        top1 = float(out.strip().splitlines()[-1])
        assert top1 == pytest.approx(
            dyve.models.shipped_meta("resnet56_cifar")["test_top1"], abs=0.011
        )
        total = dyve.cost.static_cost(dyve.models.create("resnet56_cifar")).total_macs
        assert f"{total:,}" in out  # the per-layer cost table, with its total, came first
    if "discover(" in code:  # the structure of ResNet-56: 27 residual blocks in 3 stages
        assert "27 blocks, 3 stages" in out


def test_readme_has_no_placeholders() -> None:
    text = README.read_text()
    assert "DEMO_OUTPUT" not in text
    assert "WEIGHTS_TABLE" not in text
