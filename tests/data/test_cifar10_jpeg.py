"""``cifar10-jpeg`` prepared from ../shared/data, and the embedded demo sample built from it."""

from __future__ import annotations

import io
import re
import shutil
import tarfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dyve import data
from dyve.data import cifar10
from dyve.errors import ChecksumError, DataError


@pytest.fixture(scope="module")
def jpeg_dir(shared_path: Callable[..., Path]) -> Path:
    return shared_path("cifar10-jpeg")


@pytest.fixture(scope="module")
def decoded_test(jpeg_dir: Path) -> dict[str, np.ndarray]:
    with np.load(jpeg_dir / "cifar10_jpeg_decoded_test.npz") as z:
        return {"x": z["x_test"], "y": z["y_test"]}


@pytest.fixture(scope="module")
def canonical(jpeg_dir: Path) -> dict[str, np.ndarray]:
    with np.load(jpeg_dir / "cifar10_labels_canonical.npz") as z:
        return {"y_train": z["y_train"], "y_test": z["y_test"]}


def load_jpeg(split: str, jpeg_dir: Path) -> data.ImageSet:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every standard split is complete: no warning
        return data.load("cifar10-jpeg", split, source=jpeg_dir)


@pytest.mark.parametrize(
    ("split", "n"), [("train", 45_000), ("val", 5_000), ("trainval", 50_000), ("test", 10_000)]
)
def test_split_sizes(split: str, n: int, jpeg_dir: Path) -> None:
    s = load_jpeg(split, jpeg_dir)
    assert len(s) == n
    assert s.images.shape == (n, 32, 32, 3)
    assert s.images.dtype == np.uint8
    assert s.labels.dtype == np.int64
    assert s.shape == (3, 32, 32)
    assert (s.name, s.split, s.classes) == ("cifar10-jpeg", split, cifar10.CLASSES)


def test_test_split_equals_decoded_npz(
    jpeg_dir: Path, decoded_test: dict[str, np.ndarray], canonical: dict[str, np.ndarray]
) -> None:
    test = load_jpeg("test", jpeg_dir)
    np.testing.assert_array_equal(test.images, decoded_test["x"])
    np.testing.assert_array_equal(test.labels, decoded_test["y"])
    np.testing.assert_array_equal(test.labels, canonical["y_test"])


def test_train_val_follow_canonical_order(jpeg_dir: Path, canonical: dict[str, np.ndarray]) -> None:
    train, val = load_jpeg("train", jpeg_dir), load_jpeg("val", jpeg_dir)
    trainval = load_jpeg("trainval", jpeg_dir)
    y = canonical["y_train"]
    np.testing.assert_array_equal(np.concatenate([train.labels, val.labels]), y)
    np.testing.assert_array_equal(trainval.labels, y)
    np.testing.assert_array_equal(val.images, trainval.images[45_000:])
    np.testing.assert_array_equal(val.index, np.arange(45_000, 50_000))
    np.testing.assert_array_equal(train.images[:500], trainval.images[:500])


def test_corrupted_copy_fails_checksum(jpeg_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    tar = src / "cifar10_jpeg.tar.gz"
    shutil.copyfile(jpeg_dir / "cifar10_jpeg.tar.gz", tar)
    shutil.copyfile(jpeg_dir / "cifar10_labels_canonical.npz", src / "cifar10_labels_canonical.npz")
    with open(tar, "r+b") as fh:
        fh.seek(tar.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0x01]))
    root = tmp_path / "root"
    with pytest.raises(ChecksumError, match=re.escape(str(tar)) + ": sha256 checksum mismatch"):
        data.prepare("cifar10-jpeg", source=src, root=root, verify=True)
    assert not data.is_prepared("cifar10-jpeg", root)


def test_truncated_copy_names_the_file(jpeg_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    tar = src / "cifar10_jpeg.tar.gz"
    # A short prefix keeps the test fast: the reader hits the end of the gzip stream early.
    with open(jpeg_dir / "cifar10_jpeg.tar.gz", "rb") as fh:
        tar.write_bytes(fh.read(200_000))
    shutil.copyfile(jpeg_dir / "cifar10_labels_canonical.npz", src / "cifar10_labels_canonical.npz")
    root = tmp_path / "root"
    with pytest.raises(DataError, match=re.escape(str(tar)) + ": truncated or corrupt"):
        data.prepare("cifar10-jpeg", source=src, root=root, verify=False)
    assert not data.is_prepared("cifar10-jpeg", root)
    with pytest.raises(ChecksumError, match=re.escape(str(tar))):
        data.prepare("cifar10-jpeg", source=src, root=root, verify=True)


# ---------------------------------------------------------------- a tiny JPEG tree in tmp_path
TINY_Y = {"train": np.array([3, 0, 3, 1, 0, 3]), "test": np.array([1, 9, 1])}


def jpeg(pos: int, size: tuple[int, int] = (32, 32)) -> bytes:
    rng = np.random.default_rng(pos)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def decoded(blob: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))


def tiny_members() -> dict[str, bytes]:
    """``split/class/NNNN.jpg`` where file NNNN of class c is its NNNN-th image in order."""
    members = {}
    for split, y in TINY_Y.items():
        for c in np.unique(y):
            for k, pos in enumerate(np.flatnonzero(y == c)):
                seed = 1000 * (split == "test") + int(pos)
                members[f"{split}/{cifar10.CLASSES[c]}/{k:04d}.jpg"] = jpeg(seed)
    return members


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name in sorted(members, reverse=True):  # the order in the tar does not matter
            info = tarfile.TarInfo(name)
            info.size = len(members[name])
            tar.addfile(info, io.BytesIO(members[name]))
    return path


def test_tiny_tree_is_put_back_in_canonical_order(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_tar(src / "cifar10_jpeg.tar.gz", tiny_members())
    np.savez(src / "cifar10_labels_canonical.npz", y_train=TINY_Y["train"], y_test=TINY_Y["test"])
    root = tmp_path / "root"
    data.prepare("cifar10-jpeg", source=src, root=root, verify=False)
    test = data.load("cifar10-jpeg", "test", root, source=src)
    np.testing.assert_array_equal(test.labels, TINY_Y["test"])
    np.testing.assert_array_equal(test.images, [decoded(jpeg(1000 + i)) for i in range(3)])
    with pytest.warns(UserWarning, match="only 6 of 45000"):
        train = data.load("cifar10-jpeg", "train", root, source=src)
    np.testing.assert_array_equal(train.labels, TINY_Y["train"])
    np.testing.assert_array_equal(train.images, [decoded(jpeg(i)) for i in range(6)])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"train/cat/0002.jpg": None}, "1 train images missing"),
        ({"train/cat/0003.jpg": jpeg(7)}, "has no label in the canonical order"),
        ({"train/unicorn/0000.jpg": jpeg(7)}, "unexpected member"),
        ({"valid/cat/0000.jpg": jpeg(7)}, "unexpected member"),
        ({"test/truck/0000.jpg": jpeg(7, (32, 31))}, r"is \(32, 31\), expected 32x32"),
        ({"test/truck/0000.jpg": b"not a jpeg"}, "truncated or corrupt"),
    ],
)
def test_tiny_tree_errors(tmp_path: Path, change: dict[str, bytes | None], match: str) -> None:
    members = tiny_members()
    for name, blob in change.items():
        if blob is None:
            del members[name]
        else:
            members[name] = blob
    tar = write_tar(tmp_path / "t.tar.gz", members)
    with pytest.raises(DataError, match=re.escape(str(tar)) + ".*" + match):
        cifar10.decode_jpeg_tree(tar, TINY_Y["train"], TINY_Y["test"])


def test_unknown_split_lists_splits(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=r"unknown split 'bogus'; splits: train, val, trainval, test"
    ):
        data.load("cifar10-jpeg", "bogus", tmp_path)
    assert not (tmp_path / "cifar10-jpeg").exists()


def test_demo_sample_shape() -> None:
    """The embedded sample ships with the package: no shared data needed."""
    sample = data.load_sample()
    assert len(sample) == 1000
    assert sample.images.shape == (1000, 32, 32, 3)
    assert sample.images.dtype == np.uint8
    assert sample.labels.dtype == np.int64
    assert (sample.name, sample.split, sample.classes) == (
        "cifar10-jpeg",
        "test-sample",
        cifar10.CLASSES,
    )
    np.testing.assert_array_equal(sample.index, np.arange(1000))


def test_demo_sample_is_first_thousand_test_images(
    jpeg_dir: Path, decoded_test: dict[str, np.ndarray]
) -> None:
    sample = data.load_sample()
    np.testing.assert_array_equal(sample.labels, decoded_test["y"][:1000])
    np.testing.assert_array_equal(sample.labels, load_jpeg("test", jpeg_dir).labels[:1000])
    np.testing.assert_array_equal(sample.images, decoded_test["x"][:1000])
