"""Batching, normalisation and augmentation (``dyve.data.loader``), ImageSet, and atomic writes."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import torch

from dyve import data
from dyve._io import atomic_write
from dyve.data import Normalization, augment_crop_flip, batches
from dyve.errors import DataError

NORM3 = Normalization((0.5, 0.25, 0.75), (0.2, 0.4, 0.5))


def make_set(n: int = 10, h: int = 4, w: int = 5, c: int = 3, seed: int = 0) -> data.ImageSet:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n)  # each image carries its own id
    return data.ImageSet(images, np.arange(n, dtype=np.int64) % 7, ("a",) * 7, "toy", "test")


def ids(x: torch.Tensor, norm: Normalization = NORM3) -> list[int]:
    """Recover the ids written by make_set from a normalised batch."""
    raw = x[:, 0, 0, 0] * norm.std[0] + norm.mean[0]
    return [round(v) for v in (raw * 255).tolist()]


def all_ids(xs: Iterable[torch.Tensor]) -> list[int]:
    return [i for x in xs for i in ids(x)]


# ---------------------------------------------------------------- batches
def test_batch_shapes_and_dtypes() -> None:
    s = make_set()
    out = list(batches(s, 4, NORM3))
    assert [tuple(x.shape) for x, _ in out] == [(4, 3, 4, 5), (4, 3, 4, 5), (2, 3, 4, 5)]
    for x, y in out:
        assert x.dtype == torch.float32
        assert y.dtype == torch.int64
        assert x.is_contiguous()
    np.testing.assert_array_equal(torch.cat([y for _, y in out]).numpy(), s.labels)
    assert all_ids(x for x, _ in out) == list(range(10))


def test_normalisation_math() -> None:
    img = np.array([[[0, 128, 255], [51, 102, 204]]], dtype=np.uint8)[None]  # [1,1,2,3]
    x = NORM3.apply(torch.from_numpy(img))
    assert x.shape == (1, 3, 1, 2)
    ref = (img.astype(np.float64) / 255 - np.array(NORM3.mean)) / np.array(NORM3.std)
    np.testing.assert_allclose(x.numpy(), ref.transpose(0, 3, 1, 2), rtol=0, atol=1e-6)
    assert x[0, 0, 0, 0].item() == pytest.approx((0 - 0.5) / 0.2)
    assert x[0, 2, 0, 0].item() == pytest.approx((1 - 0.75) / 0.5)


def test_normalisation_channel_mismatch() -> None:
    with pytest.raises(ValueError, match="1 channels, images have 3"):
        next(batches(make_set(), 2, Normalization((0.5,), (0.5,))))


def test_shuffle_is_deterministic_and_a_permutation() -> None:
    s = make_set(n=50)
    first = [ids(x) for x, _ in batches(s, 8, NORM3, shuffle=True, seed=3)]
    again = [ids(x) for x, _ in batches(s, 8, NORM3, shuffle=True, seed=3)]
    other = all_ids(x for x, _ in batches(s, 8, NORM3, shuffle=True, seed=4))
    order = [i for b in first for i in b]
    assert first == again
    assert [len(b) for b in first] == [8] * 6 + [2]
    assert sorted(order) == list(range(50))
    assert order != list(range(50))
    assert other != order


def test_labels_follow_shuffled_images() -> None:
    s = make_set(n=30)
    for x, y in batches(s, 7, NORM3, shuffle=True, seed=1):
        np.testing.assert_array_equal(y.numpy(), s.labels[ids(x)])


def test_drop_last() -> None:
    s = make_set(n=10)
    assert [len(y) for _, y in batches(s, 4, NORM3, drop_last=True)] == [4, 4]
    assert [len(y) for _, y in batches(s, 4, NORM3)] == [4, 4, 2]
    assert [len(y) for _, y in batches(s, 5, NORM3, drop_last=True)] == [5, 5]
    assert list(batches(s, 11, NORM3, drop_last=True)) == []


def test_indices_select_and_order() -> None:
    s = make_set(n=10)
    out = list(batches(s, 2, NORM3, indices=[7, 2, 5]))
    assert all_ids(x for x, _ in out) == [7, 2, 5]


@pytest.mark.parametrize("bs", [0, -1])
def test_batch_size_below_one_raises(bs: int) -> None:
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        next(batches(make_set(), bs, NORM3))


def test_augmented_batches_keep_shape_and_are_seeded() -> None:
    s = make_set(n=12, h=8, w=8)
    a = list(batches(s, 5, NORM3, augment=True, shuffle=True, seed=2))
    b = list(batches(s, 5, NORM3, augment=True, shuffle=True, seed=2))
    plain = list(batches(s, 5, NORM3, shuffle=True, seed=2))
    assert [tuple(x.shape) for x, _ in a] == [tuple(x.shape) for x, _ in plain]
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb)
        assert torch.equal(ya, yb)
    assert not all(torch.equal(xa, xp) for (xa, _), (xp, _) in zip(a, plain, strict=True))


# ---------------------------------------------------------------- augment_crop_flip
def test_augment_pad0_is_identity_or_flip() -> None:
    x = torch.randn(64, 3, 5, 6, generator=torch.Generator().manual_seed(0))
    out = augment_crop_flip(x, torch.Generator().manual_seed(1), pad=0)
    assert out.shape == x.shape
    flipped = 0
    for i in range(len(x)):
        same, flip = torch.equal(out[i], x[i]), torch.equal(out[i], x[i].flip(-1))
        assert same or flip
        flipped += flip
    assert 0 < flipped < len(x)  # both cases occur (probability of failure ~1e-19)


def test_augment_is_a_padded_crop() -> None:
    pad = 2
    x = torch.rand(16, 2, 4, 4, generator=torch.Generator().manual_seed(0)) + 1  # no zeros
    out = augment_crop_flip(x, torch.Generator().manual_seed(5), pad=pad)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    for i in range(len(x)):
        shifts = range(2 * pad + 1)
        crops = [padded[i, :, dy : dy + 4, dx : dx + 4] for dy in shifts for dx in shifts]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(-1)) for c in crops)


# ---------------------------------------------------------------- ImageSet
def test_imageset_validates_arrays() -> None:
    with pytest.raises(DataError, match="uint8"):
        data.ImageSet(np.zeros((2, 4, 4, 3), np.float32), np.zeros(2), (), "t", "s")
    with pytest.raises(DataError, match="uint8"):
        data.ImageSet(np.zeros((2, 4, 4), np.uint8), np.zeros(2), (), "t", "s")
    with pytest.raises(DataError, match="2 images but 3 labels"):
        data.ImageSet(np.zeros((2, 4, 4, 3), np.uint8), np.zeros(3), (), "t", "s")


def test_imageset_subset() -> None:
    s = make_set(n=6)
    sub = s.subset(np.array([4, 1]))
    np.testing.assert_array_equal(sub.images, s.images[[4, 1]])
    np.testing.assert_array_equal(sub.labels, s.labels[[4, 1]])
    np.testing.assert_array_equal(sub.index, [4, 1])
    np.testing.assert_array_equal(sub.subset(slice(1, 2)).index, [1])


# ---------------------------------------------------------------- _io.atomic_write
def test_atomic_write_success(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "f.bin"
    with atomic_write(path) as fh:
        fh.write(b"hello")
    assert path.read_bytes() == b"hello"
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.bin"]


def write_then_fail(path: Path, exc: BaseException) -> None:
    with atomic_write(path, "w") as fh:
        fh.write("partial")
        fh.flush()
        raise exc


def test_atomic_write_failure_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    with pytest.raises(RuntimeError, match="boom"):
        write_then_fail(path, RuntimeError("boom"))
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_failure_keeps_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_text("original")
    with pytest.raises(KeyboardInterrupt):
        write_then_fail(path, KeyboardInterrupt())
    assert path.read_text() == "original"
    assert list(tmp_path.iterdir()) == [path]
