"""Every script in examples/ runs to completion (they are part of the docs)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip(), "an example should print what it shows"
    if script.name == "quickstart.py":  # its figures are the library's
        _check_quickstart(proc.stdout)


def _check_quickstart(text: str) -> None:
    import dyve
    from dyve.eval.evaluate import evaluate

    net = dyve.models.create("resnet20_cifar", pretrained=True)
    macs = dyve.cost.static_cost(net).total_macs
    assert f"{macs / 1e6:.1f} M MACs per image" in text
    acc = evaluate(net, dyve.data.load_sample(), dyve.models.model_info(net).norm)
    assert f"top-1 on the {acc.n}-image sample: {acc.top1:.1f} %" in text
    assert re.search(r"batch-1 latency, 1 thread: \d+\.\d\d ms", text)
