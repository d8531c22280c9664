"""``folder:ROOT`` datasets: an ImageFolder-like tree of small PNGs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dyve import data
from dyve.errors import DataError

Tree = dict[str, dict[str, np.ndarray]]


def write_tree(base: Path, tree: Tree) -> None:
    """``tree[class][file name] = HWC uint8 image`` written as PNG under ``base``."""
    for cls, files in tree.items():
        (base / cls).mkdir(parents=True)
        for name, arr in files.items():
            Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(base / cls / name)


def random_tree(rng: np.random.Generator, classes: dict[str, int], shape=(6, 5, 3)) -> Tree:
    return {
        cls: {f"{i:03d}.png": rng.integers(0, 256, shape, dtype=np.uint8) for i in range(n)}
        for cls, n in classes.items()
    }


def expected(tree: Tree) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    classes = tuple(sorted(tree))
    images, labels = [], []
    for c, cls in enumerate(classes):
        for name in sorted(tree[cls]):
            images.append(tree[cls][name])
            labels.append(c)
    return classes, np.stack(images), np.array(labels)


def test_flat_layout(tmp_path: Path) -> None:
    # Created out of order: classes must come back sorted, files sorted within a class.
    tree = random_tree(np.random.default_rng(0), {"zebra": 2, "ant": 3, "moth": 1})
    write_tree(tmp_path / "imgs", tree)
    (tmp_path / "imgs" / "ant" / "notes.txt").write_text("not an image, ignored")
    s = data.load(f"folder:{tmp_path / 'imgs'}", "test")
    classes, images, labels = expected(tree)
    assert s.classes == classes == ("ant", "moth", "zebra")
    np.testing.assert_array_equal(s.labels, [0, 0, 0, 1, 2, 2])
    np.testing.assert_array_equal(s.labels, labels)
    assert s.images.dtype == np.uint8
    assert s.images.shape == (6, 6, 5, 3)
    assert s.shape == (3, 6, 5)
    np.testing.assert_array_equal(s.images, images)
    assert (s.name, s.split) == (f"folder:{tmp_path / 'imgs'}", "test")


def test_files_are_read_in_name_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    names = [f"{c}.png" for c in "hcfadgbe"]  # created in this (unsorted) order
    tree = {"k": {n: rng.integers(0, 256, (3, 3, 3), dtype=np.uint8) for n in names}}
    write_tree(tmp_path, tree)
    s = data.load(f"folder:{tmp_path}", "train")
    np.testing.assert_array_equal(s.images, [tree["k"][n] for n in sorted(names)])


def test_split_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    train = random_tree(rng, {"b": 2, "a": 2})
    test = random_tree(rng, {"b": 1, "a": 1})
    write_tree(tmp_path / "train", train)
    write_tree(tmp_path / "test", test)
    for split, tree in (("train", train), ("test", test)):
        s = data.load(f"folder:{tmp_path}", split)
        classes, images, labels = expected(tree)
        assert s.classes == classes == ("a", "b")
        np.testing.assert_array_equal(s.labels, labels)
        np.testing.assert_array_equal(s.images, images)


def test_grayscale_images_get_one_channel(tmp_path: Path) -> None:
    tree = random_tree(np.random.default_rng(2), {"x": 2, "y": 1}, shape=(4, 4, 1))
    write_tree(tmp_path, tree)
    s = data.load(f"folder:{tmp_path}", "train")
    assert s.images.shape == (3, 4, 4, 1)
    np.testing.assert_array_equal(s.images, expected(tree)[1])


def test_different_sizes_are_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    write_tree(tmp_path, random_tree(rng, {"a": 1}, shape=(6, 5, 3)))
    write_tree(tmp_path, random_tree(rng, {"b": 1}, shape=(5, 6, 3)))
    with pytest.raises(DataError, match="different sizes"):
        data.load(f"folder:{tmp_path}", "train")


def test_unreadable_png_is_named(tmp_path: Path) -> None:
    write_tree(tmp_path, random_tree(np.random.default_rng(4), {"a": 2}))
    bad = tmp_path / "a" / "broken.png"
    bad.write_text("this is not a png")
    with pytest.raises(DataError, match=re.escape(str(bad)) + ": not a readable image"):
        data.load(f"folder:{tmp_path}", "train")


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="image folder does not exist"):
        data.load(f"folder:{tmp_path / 'nope'}", "train")


def test_folder_without_classes_or_images(tmp_path: Path) -> None:
    (tmp_path / "img.png").write_bytes(b"")
    with pytest.raises(DataError, match="one sub-folder per class"):
        data.load(f"folder:{tmp_path}", "train")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DataError, match="no images with extensions"):
        data.load(f"folder:{tmp_path}", "train")
