"""Shared fixtures for the data tests: the real data folder and a guard against downloads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from dyve.data import cifar10

#: ``../shared/data`` seen from the repository root.
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _shared_path(*parts: str) -> Path:
    """A path under the shared data folder, or skip the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared/data not found: {SHARED_DATA} is missing (real-data test)")
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"../shared/data not found: {path} is missing (real-data test)")
    return path


@pytest.fixture(scope="session")
def shared_path() -> Callable[..., Path]:
    """``shared_path("mnist", "x.gz")``: a path under ../shared/data; skips when absent."""
    return _shared_path


@pytest.fixture(autouse=True)
def _no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never touch the network: the CIFAR-10 download fallback fails loudly."""

    def refuse(dest_dir: Path) -> Path:
        raise AssertionError(f"test tried to download CIFAR-10 into {dest_dir}")

    monkeypatch.setattr(cifar10, "download", refuse)


@pytest.fixture(scope="session")
def exact_npz() -> dict[str, np.ndarray]:
    """The arrays of ``cifar10_exact_partial.npz`` (original CIFAR-10 pixels)."""
    path = _shared_path("cifar10-exact-partial", "cifar10_exact_partial.npz")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}
