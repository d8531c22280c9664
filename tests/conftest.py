"""Shared fixtures: seeding, the shared data folder (skip when absent), prepared datasets."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
AKAMASTER = SHARED / "weights" / "akamaster-resnet-cifar10"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``gpu``-marked tests, with the reason, when no CUDA device is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none is present")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)  # noqa: NPY002  (seeds code that uses the legacy global RNG)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; tests using it skip when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not found: the real CIFAR-10/MNIST data and weights are not here")
    return SHARED


@pytest.fixture(scope="session")
def prepared(shared_data: Path):  # type: ignore[no-untyped-def]
    """A function that prepares a dataset from the shared data (once) and returns its name."""
    from dyve import data

    def _prepare(name: str) -> str:
        data.prepare(name, source=shared_data)
        return name

    return _prepare


@pytest.fixture
def run_snippet(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Run Python source in a fresh interpreter in a temp folder; fail with its stderr."""
    import subprocess
    import sys

    def _run(code: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    return _run


@pytest.fixture(scope="session")
def skip_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A block-skipping resnet20 saved as a run (shipped weights, a threshold that skips)."""
    import dyve
    from dyve.mechanisms import BlockSkip
    from dyve.models import create

    out = tmp_path_factory.mktemp("runs") / "skip_r20"
    net = dyve.equip(create("resnet20_cifar", pretrained=True), BlockSkip(threshold=0.6))
    dyve.dynamic.save(net, out)
    return out


@pytest.fixture
def logit_dtypes(monkeypatch: pytest.MonkeyPatch) -> set[torch.dtype]:
    """The dtypes of the logits every ``F.cross_entropy`` call sees from now on (a trainer
    under bf16 autocast hands it bfloat16 logits)."""
    seen: set[torch.dtype] = set()
    real = torch.nn.functional.cross_entropy

    def recording(logits: torch.Tensor, *args, **kwargs) -> torch.Tensor:  # type: ignore[no-untyped-def]
        seen.add(logits.dtype)
        return real(logits, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", recording)
    return seen


@pytest.fixture
def crash_second_call(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """``crash_second_call(module, name)``: from now on the second call of ``module.name``
    raises ``RuntimeError("simulated crash")`` (a trainer's validation of epoch 2, before
    its checkpoint); returns the real function, to put back before resuming."""

    def patch(module: object, name: str):  # type: ignore[no-untyped-def]
        real = getattr(module, name)
        calls = {"n": 0}

        def crashing(*a, **k):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("simulated crash")
            return real(*a, **k)

        monkeypatch.setattr(module, name, crashing)
        return real

    return patch
