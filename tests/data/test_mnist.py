"""MNIST: the idx reader on small files, and the shared (partial) MNIST."""

from __future__ import annotations

import gzip
import json
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from dyve import data
from dyve.data import mnist
from dyve.errors import DataError

IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}


def idx_bytes(arr: np.ndarray) -> bytes:
    head = bytes([0, 0, IDX_CODES[arr.dtype], arr.ndim])
    dims = b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return head + dims + arr.tobytes()


def write_idx(path: Path, arr: np.ndarray) -> Path:
    blob = idx_bytes(arr)
    path.write_bytes(gzip.compress(blob) if path.suffix == ".gz" else blob)
    return path


@pytest.fixture(scope="module")
def mnist_dir(shared_path: Callable[..., Path]) -> Path:
    return shared_path("mnist")


@pytest.fixture(scope="module", params=["default-cache", "fresh-cache"])
def root(
    request: pytest.FixtureRequest,
    mnist_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    cache_root: Callable[..., Path | None],
) -> Path | None:
    return cache_root(request, "mnist", mnist_dir, tmp_path_factory)


# ---------------------------------------------------------------- read_idx
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_images_and_labels(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 4, 3), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    got_x = mnist.read_idx(write_idx(tmp_path / f"images-idx3-ubyte{suffix}", images))
    got_y = mnist.read_idx(write_idx(tmp_path / f"labels-idx1-ubyte{suffix}", labels))
    assert got_x.shape == (5, 4, 3)
    assert got_x.dtype == np.uint8
    np.testing.assert_array_equal(got_x, images)
    assert got_y.shape == (5,)
    np.testing.assert_array_equal(got_y, labels)


def test_read_idx_big_endian_int32(tmp_path: Path) -> None:
    arr = np.array([[1, -2], [70_000, 3]], dtype=">i4")
    got = mnist.read_idx(write_idx(tmp_path / "x.idx", arr))
    np.testing.assert_array_equal(got, [[1, -2], [70_000, 3]])


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_bad_magic(tmp_path: Path, suffix: str) -> None:
    blob = bytearray(idx_bytes(np.zeros((2, 2), np.uint8)))
    blob[2] = 0x42  # no such type code
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(gzip.compress(bytes(blob)) if suffix else bytes(blob))
    with pytest.raises(DataError, match=re.escape(str(path)) + ": not an idx file"):
        mnist.read_idx(path)
    blob = b"\x01\x00\x08\x01" + bytes(8)  # first byte must be 0
    path.write_bytes(gzip.compress(blob) if suffix else blob)
    with pytest.raises(DataError, match="bad magic"):
        mnist.read_idx(path)


def test_read_idx_truncated_data(tmp_path: Path) -> None:
    path = tmp_path / "x.idx"
    path.write_bytes(idx_bytes(np.zeros((3, 4, 4), np.uint8))[:-1])
    with pytest.raises(DataError, match=r"expected 48 bytes.*found 47"):
        mnist.read_idx(path)
    path.write_bytes(idx_bytes(np.zeros((3, 4, 4), np.uint8))[:10])
    with pytest.raises(DataError, match="truncated idx header"):
        mnist.read_idx(path)


def test_read_idx_truncated_gzip(tmp_path: Path) -> None:
    blob = gzip.compress(idx_bytes(np.arange(600, dtype=np.uint8).reshape(6, 10, 10)))
    path = tmp_path / "x.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match=re.escape(str(path)) + ": cannot read"):
        mnist.read_idx(path)


def test_prepare_from_full_idx_files(tmp_path: Path) -> None:
    """With all four idx files present, train/val are the 55,000/5,000 split of train."""
    rng = np.random.default_rng(1)
    src = tmp_path / "src"
    src.mkdir()
    x_tr = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    y_tr = rng.integers(0, 10, 6).astype(np.uint8)
    x_te = rng.integers(0, 256, (2, 28, 28), dtype=np.uint8)
    y_te = np.array([7, 2], np.uint8)
    write_idx(src / "train-images-idx3-ubyte.gz", x_tr)
    write_idx(src / "train-labels-idx1-ubyte.gz", y_tr)
    write_idx(src / "t10k-images-idx3-ubyte", x_te)  # not gzipped
    write_idx(src / "t10k-labels-idx1-ubyte.gz", y_te)
    root = tmp_path / "root"
    with pytest.raises(DataError, match="md5 checksum mismatch"):
        data.prepare("mnist", source=src, root=root, verify=True)
    data.prepare("mnist", source=src, root=root, verify=False)
    test = data.load("mnist", "test", root)
    assert test.images.shape == (2, 28, 28, 1)
    np.testing.assert_array_equal(test.images[..., 0], x_te)
    np.testing.assert_array_equal(test.labels, y_te)
    with pytest.warns(UserWarning, match="only 6 of 55000"):
        train = data.load("mnist", "train", root)
    np.testing.assert_array_equal(train.images[..., 0], x_tr)
    np.testing.assert_array_equal(train.labels, y_tr)


# ---------------------------------------------------------------- shared MNIST
def test_shared_test_split(mnist_dir: Path, root: Path | None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        test = data.load("mnist", "test", root, source=mnist_dir)
    assert test.images.shape == (10_000, 28, 28, 1)
    assert test.images.dtype == np.uint8
    assert test.shape == (1, 28, 28)
    assert test.classes == tuple("0123456789")
    np.testing.assert_array_equal(
        test.labels, mnist.read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz")
    )
    np.testing.assert_array_equal(
        test.images[..., 0], mnist.read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")
    )


def test_shared_train_is_partial(mnist_dir: Path, root: Path | None) -> None:
    with pytest.warns(UserWarning, match="mnist/train: only 17435 of 55000 images"):
        train = data.load("mnist", "train", root, source=mnist_dir)
    assert train.images.shape == (17_435, 28, 28, 1)
    with np.load(mnist_dir / "mnist_train_partial.npz") as z:
        np.testing.assert_array_equal(train.images[..., 0], z["x_train"])
        np.testing.assert_array_equal(train.labels, z["y_train"])
    y_all = mnist.read_idx(mnist_dir / "train-labels-idx1-ubyte.gz")
    np.testing.assert_array_equal(train.labels, y_all[:17_435])


def test_shared_val_is_unavailable(mnist_dir: Path, root: Path | None) -> None:
    with pytest.raises(DataError, match=r"split 'val' starts at image 55000 of train.*17435"):
        data.load("mnist", "val", root, source=mnist_dir)


def test_fresh_cache_records_partial_source(mnist_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    data.prepare("mnist", source=mnist_dir, root=root, verify=True)
    meta = json.loads((root / "mnist" / "meta.json").read_text())
    assert meta["parts"] == {"train": 17_435, "test": 10_000}
    assert meta["sources"]["train_images"].endswith("mnist_train_partial.npz")


def test_corrupt_train_images_are_not_replaced_by_partial(tmp_path: Path) -> None:
    """A present but broken train-images file is an error, not a reason to use the npz."""
    src = tmp_path / "src"
    src.mkdir()
    write_idx(src / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    write_idx(src / "t10k-labels-idx1-ubyte", np.zeros(2, np.uint8))
    write_idx(src / "train-labels-idx1-ubyte", np.zeros(4, np.uint8))
    broken = src / "train-images-idx3-ubyte"
    broken.write_bytes(idx_bytes(np.zeros((4, 28, 28), np.uint8))[:-5])
    np.savez(src / "mnist_train_partial.npz", x_train=np.zeros((3, 28, 28), np.uint8))
    root = tmp_path / "root"
    with pytest.raises(DataError, match=re.escape(str(broken)) + ".*truncated or corrupt"):
        data.prepare("mnist", source=src, root=root, verify=False)
    assert not data.is_prepared("mnist", root)
    broken.unlink()  # now only the partial file is there: it is used
    data.prepare("mnist", source=src, root=root, verify=False)
    with pytest.warns(UserWarning, match="only 3 of 55000"):
        assert len(data.load("mnist", "train", root)) == 3
