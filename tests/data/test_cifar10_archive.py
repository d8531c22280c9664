"""The official CIFAR-10 python archive reader (``cifar10``), on archives built in tmp_path."""

from __future__ import annotations

import io
import os
import pickle
import re
import struct
import tarfile
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from dyve import data
from dyve.data import cifar10
from dyve.errors import ChecksumError, DataError

BATCHES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
Batches = dict[str, tuple[np.ndarray, np.ndarray]]


# ---------------------------------------------------------------- builders
def to_rows(x_hwc: np.ndarray) -> np.ndarray:
    """HWC images -> the official [N, 3072] rows (R plane, G plane, B plane; row-major)."""
    return np.ascontiguousarray(x_hwc.transpose(0, 3, 1, 2).reshape(len(x_hwc), 3072))


def batch_pickle(x_hwc: np.ndarray, labels: np.ndarray) -> bytes:
    d = {
        b"batch_label": b"testing batch",
        b"labels": [int(v) for v in labels],
        b"data": to_rows(x_hwc),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(x_hwc))],
    }
    return pickle.dumps(d, protocol=2)


class _Py2Pickler(pickle._Pickler):
    """Writes every str/bytes as a Python 2 ``str`` (BINSTRING), like the official files."""

    dispatch: ClassVar[dict[type, Any]] = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    def save_str(self, obj: str) -> None:
        self.save_bytes(obj.encode("latin1"))

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def write_batches(parent: Path, batches: Batches, skip: tuple[str, ...] = ()) -> Path:
    """Write ``parent/cifar-10-batches-py/`` with one pickle per batch and ``batches.meta``."""
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, (x, y) in batches.items():
        if name not in skip:
            (folder / name).write_bytes(batch_pickle(x, y))
    meta = {b"label_names": [c.encode() for c in cifar10.CLASSES], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def make_archive(folder: Path, dest_dir: Path) -> Path:
    """Gzip tar of ``folder`` (named ``cifar-10-batches-py``) as ``cifar-10-python.tar.gz``."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    path = dest_dir / cifar10.ARCHIVE
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        tar.add(folder, arcname=folder.name)
    return path


def small_batches(n: int = 4, seed: int = 0) -> Batches:
    rng = np.random.default_rng(seed)
    return {
        name: (
            rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, 10, n).astype(np.int64),
        )
        for name in BATCHES
    }


def expected_train(batches: Batches) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*(batches[f"data_batch_{i}"] for i in range(1, 6)), strict=True)
    return np.concatenate(xs), np.concatenate(ys)


def small_archive(tmp_path: Path, batches: Batches, skip: tuple[str, ...] = ()) -> Path:
    folder = write_batches(tmp_path / "build", batches, skip)
    return make_archive(folder, tmp_path / "src")


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def exact_batches(exact_npz: dict[str, np.ndarray]) -> Batches:
    """The original pixels and labels of the first 1,017 images of each batch."""
    out = {}
    for name in BATCHES:
        x = exact_npz[f"x_{name}"]
        out[name] = (x, exact_npz[f"y_{name}"][: len(x)])
    return out


@pytest.fixture(scope="module")
def exact_sources(exact_batches: Batches, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An official-format archive of the exact pixels (``cifar-10-python.tar.gz``)."""
    base = tmp_path_factory.mktemp("exact")
    folder = write_batches(base / "build", exact_batches)
    return make_archive(folder, base / "src")


def check_round_trip(source: Path, root: Path, batches: Batches) -> None:
    """prepare + load give back the batches byte for byte, with the documented splits."""
    out = data.prepare("cifar10", source=source, root=root, verify=False)
    assert out == root / "cifar10"
    assert data.is_prepared("cifar10", root)
    x_train, y_train = expected_train(batches)
    n = len(x_train)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        test = data.load("cifar10", "test", root, source=source)
    assert test.images.dtype == np.uint8
    assert test.images.shape == batches["test_batch"][0].shape
    np.testing.assert_array_equal(test.images, batches["test_batch"][0])
    np.testing.assert_array_equal(test.labels, batches["test_batch"][1])
    assert test.labels.dtype == np.int64
    assert test.classes == cifar10.CLASSES
    np.testing.assert_array_equal(test.index, np.arange(len(test)))

    # The cache holds n < 45,000 training images: train/trainval are truncated, with a warning.
    with pytest.warns(UserWarning, match=rf"cifar10/train: only {n} of 45000 images"):
        train = data.load("cifar10", "train", root, source=source)
    np.testing.assert_array_equal(train.images, x_train)
    np.testing.assert_array_equal(train.labels, y_train)
    with pytest.warns(UserWarning, match=rf"cifar10/trainval: only {n} of 50000 images"):
        trainval = data.load("cifar10", "trainval", root, source=source)
    np.testing.assert_array_equal(trainval.images, x_train)
    np.testing.assert_array_equal(trainval.labels, y_train)
    with pytest.raises(DataError, match=rf"split 'val' starts at image 45000 of train.*holds {n}"):
        data.load("cifar10", "val", root, source=source)


# ---------------------------------------------------------------- tests
def test_archive_round_trip_exact_pixels(
    exact_sources: Path, exact_batches: Batches, tmp_path: Path
) -> None:
    assert len(exact_batches["data_batch_1"][0]) == 1017
    check_round_trip(exact_sources, tmp_path / "root", exact_batches)


def test_extracted_folder_round_trip(tmp_path: Path) -> None:
    batches = small_batches(n=5, seed=1)
    folder = write_batches(tmp_path / "parent", batches)
    # The folder itself and the folder that holds it are both accepted as source.
    check_round_trip(folder, tmp_path / "root1", batches)
    check_round_trip(folder.parent, tmp_path / "root2", batches)


def test_row_layout_is_channel_major() -> None:
    plane = (np.arange(1024) % 251).astype(np.uint8)
    row = np.concatenate([plane, plane + 1, plane + 2])[None]
    blob = pickle.dumps({b"data": row, b"labels": [7]}, protocol=2)
    x, y = cifar10.read_batch(blob, "mem")
    assert x.shape == (1, 32, 32, 3)
    assert x.dtype == np.uint8
    np.testing.assert_array_equal(y, [7])
    np.testing.assert_array_equal(x[0, :, :, 0], plane.reshape(32, 32))
    assert x[0, 0, 1].tolist() == [1, 2, 3]  # second pixel of the first row
    assert x[0, 1, 0].tolist() == [32, 33, 34]  # first pixel of the second row


def test_python2_pickles_are_read() -> None:
    """The official batches were written by Python 2 (str keys/data as BINSTRING)."""
    x, y = small_batches(n=3)["data_batch_1"]
    d = {b"batch_label": b"b1", b"labels": [int(v) for v in y], b"data": to_rows(x)}
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(d)
    assert b"_codecs" not in buf.getvalue()
    got_x, got_y = cifar10.read_batch(buf.getvalue(), "py2")
    np.testing.assert_array_equal(got_x, x)
    np.testing.assert_array_equal(got_y, y)


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ({b"labels": [1]}, "not a CIFAR-10 python batch"),
        ([1, 2, 3], "not a CIFAR-10 python batch"),
        ({b"data": np.zeros((2, 3071), np.uint8), b"labels": [0, 1]}, r"\[N,3072\]"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, r"\[N,3072\] and N labels"),
    ],
)
def test_malformed_batch_is_refused(obj: object, match: str) -> None:
    with pytest.raises(DataError, match=match):
        cifar10.read_batch(pickle.dumps(obj, protocol=2), "where/x")


def test_verify_refuses_non_official_archive(tmp_path: Path) -> None:
    archive = small_archive(tmp_path, small_batches())
    with pytest.raises(ChecksumError, match=re.escape(str(archive)) + ".*md5 checksum mismatch"):
        data.prepare("cifar10", source=archive, root=tmp_path / "root", verify=True)
    assert not data.is_prepared("cifar10", tmp_path / "root")


def test_verify_refuses_non_official_folder(tmp_path: Path) -> None:
    folder = write_batches(tmp_path / "parent", small_batches())
    with pytest.raises(ChecksumError, match="data_batch_1: md5 checksum mismatch"):
        data.prepare("cifar10", source=folder, root=tmp_path / "root", verify=True)
    assert not data.is_prepared("cifar10", tmp_path / "root")


def test_truncated_archive_names_the_file(tmp_path: Path) -> None:
    archive = small_archive(tmp_path, small_batches())
    blob = archive.read_bytes()
    archive.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match=re.escape(str(archive)) + ": truncated"):
        data.prepare("cifar10", source=archive, root=tmp_path / "root", verify=False)
    assert not data.is_prepared("cifar10", tmp_path / "root")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_forbidden_global_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    folder = write_batches(tmp_path / "build", small_batches())
    evil = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [_Evil(marker)]}
    (folder / "data_batch_3").write_bytes(pickle.dumps(evil, protocol=2))
    archive = make_archive(folder, tmp_path / "src")
    with pytest.raises(DataError, match=r"data_batch_3.*refusing to load (posix|os)\.system"):
        data.prepare("cifar10", source=archive, root=tmp_path / "root", verify=False)
    assert not marker.exists()
    assert not data.is_prepared("cifar10", tmp_path / "root")


def test_missing_batch_in_archive(tmp_path: Path) -> None:
    archive = small_archive(tmp_path, small_batches(), skip=("test_batch",))
    with pytest.raises(DataError, match=re.escape(str(archive)) + ": archive lacks test_batch"):
        data.prepare("cifar10", source=archive, root=tmp_path / "root", verify=False)


def test_missing_batch_in_folder(tmp_path: Path) -> None:
    folder = write_batches(tmp_path / "parent", small_batches(), skip=("data_batch_4",))
    expected = re.escape(str(folder / "data_batch_4")) + ": missing CIFAR-10 batch file"
    with pytest.raises(DataError, match=expected):
        data.prepare("cifar10", source=folder.parent, root=tmp_path / "root", verify=False)


def test_damaged_cache_is_reported_and_force_rebuilds(tmp_path: Path) -> None:
    batches = small_batches(n=2)
    archive = small_archive(tmp_path, batches)
    root = tmp_path / "root"
    data.prepare("cifar10", source=archive, root=root, verify=False)
    (root / "cifar10" / "test_x.npy").unlink()
    with pytest.raises(DataError, match=r"test_x\.npy: cache file missing"):
        data.load("cifar10", "test", root, source=archive)
    np.save(root / "cifar10" / "test_x.npy", batches["test_batch"][0][:1])
    with pytest.raises(DataError, match=r"1 images, meta.json says 2"):
        data.load("cifar10", "test", root, source=archive)
    data.prepare("cifar10", source=archive, root=root, verify=False, force=True)
    test = data.load("cifar10", "test", root, source=archive)
    np.testing.assert_array_equal(test.images, batches["test_batch"][0])


def test_unknown_source_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="source path does not exist"):
        data.prepare("cifar10", source=tmp_path / "nope", root=tmp_path / "root")
    assert not (tmp_path / "root").exists()
