"""``cifar10-exact``: the original pixels of the first 1,017 images of each batch."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from dyve import data
from dyve.data import cifar10
from dyve.errors import DataError


@pytest.fixture(scope="module")
def exact_dir(shared_path: Callable[..., Path]) -> Path:
    return shared_path("cifar10-exact-partial")


@pytest.fixture(scope="module", params=["default-cache", "fresh-cache"])
def root(
    request: pytest.FixtureRequest,
    exact_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    cache_root: Callable[..., Path | None],
) -> Path | None:
    return cache_root(request, "cifar10-exact", exact_dir, tmp_path_factory)


def load_exact(split: str, source: Path, root: Path | None) -> data.ImageSet:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the exact splits are complete: no warning
        return data.load("cifar10-exact", split, root, source=source)


def test_train_split(exact_dir: Path, root: Path | None, exact_npz: dict[str, np.ndarray]) -> None:
    train = load_exact("train", exact_dir, root)
    assert len(train) == 5085
    assert train.images.shape == (5085, 32, 32, 3)
    assert train.images.dtype == np.uint8
    assert train.classes == cifar10.CLASSES
    for k in range(1, 6):
        rows = slice((k - 1) * 1017, k * 1017)
        np.testing.assert_array_equal(train.images[rows], exact_npz[f"x_data_batch_{k}"])
        np.testing.assert_array_equal(train.labels[rows], exact_npz[f"y_data_batch_{k}"][:1017])
        np.testing.assert_array_equal(train.index[rows], (k - 1) * 10_000 + np.arange(1017))


def test_test_split(exact_dir: Path, root: Path | None, exact_npz: dict[str, np.ndarray]) -> None:
    test = load_exact("test", exact_dir, root)
    assert len(test) == 1017
    np.testing.assert_array_equal(test.images, exact_npz["x_test_batch"])
    np.testing.assert_array_equal(test.labels, exact_npz["y_test_batch"][:1017])
    np.testing.assert_array_equal(test.index, np.arange(1017))


def test_subset_keeps_original_positions(exact_dir: Path, root: Path | None) -> None:
    train = load_exact("train", exact_dir, root)
    sub = train.subset(np.array([1017, 0, 5084]))
    np.testing.assert_array_equal(sub.index, [10_000, 0, 40_000 + 1016])
    np.testing.assert_array_equal(sub.images[0], train.images[1017])


def test_val_is_unavailable(exact_dir: Path, root: Path | None) -> None:
    with pytest.raises(DataError, match=r"split 'val' is not available.*first 45,000"):
        data.load("cifar10-exact", "val", root, source=exact_dir)
