"""Shared fixtures for the data tests: the real data folder and a guard against downloads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from dyve import data
from dyve.data import cifar10


@pytest.fixture(scope="session")
def shared_path(shared_data: Path) -> Callable[..., Path]:
    """``shared_path("mnist", "x.gz")``: a path under ../shared/data; skips when absent."""

    def _path(*parts: str) -> Path:
        path = shared_data.joinpath(*parts)
        if not path.exists():
            pytest.skip(f"../shared/data not found: {path} is missing (real-data test)")
        return path

    return _path


def _cache_root(
    request: pytest.FixtureRequest, name: str, source: Path, factory: pytest.TempPathFactory
) -> Path | None:
    if request.param == "default-cache":
        return None
    fresh = factory.mktemp(f"{name}-root")
    data.prepare(name, source=source, root=fresh, verify=True)
    return fresh


@pytest.fixture(scope="session")
def cache_root() -> Callable[..., Path | None]:
    """For a fixture parametrised over "default-cache"/"fresh-cache": the default data dir
    (None), or a cache of the dataset prepared now, with checksums, in a temp dir."""
    return _cache_root


@pytest.fixture(autouse=True)
def _no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never touch the network: the CIFAR-10 download fallback fails loudly."""

    def refuse(dest_dir: Path) -> Path:
        raise AssertionError(f"test tried to download CIFAR-10 into {dest_dir}")

    monkeypatch.setattr(cifar10, "download", refuse)


@pytest.fixture(scope="session")
def exact_npz(shared_path: Callable[..., Path]) -> dict[str, np.ndarray]:
    """The arrays of ``cifar10_exact_partial.npz`` (original CIFAR-10 pixels)."""
    path = shared_path("cifar10-exact-partial", "cifar10_exact_partial.npz")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}
