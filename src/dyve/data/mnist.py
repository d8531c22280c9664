"""MNIST from the official idx files (gzipped or not).

Splits: ``train`` = first 55,000 training images, ``val`` = last 5,000, ``test`` = the
10,000 test images. When only a prefix of the training images exists as
``mnist_train_partial.npz`` (as in the shared data release), ``train`` holds what is there
and ``val`` is unavailable: dyve says so rather than inventing a smaller split.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from dyve._io import verify_digest
from dyve.data.core import DATASETS, DatasetSpec, find_file, load_npz, save_parts
from dyve.errors import DataError

CLASSES = tuple(str(i) for i in range(10))
MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
_DTYPES: dict[int, str | type] = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (the MNIST container format) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read ({exc}); truncated or not gzip") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise DataError(f"{path}: not an idx file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated idx header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(
            f"{path}: expected {expected} bytes of data for shape {shape}, "
            f"found {len(data) - header} (truncated or corrupt)"
        )
    return np.frombuffer(data, dtype, offset=header).reshape(shape)


def _read(dirs: list[Path], stem: str, verify: bool) -> np.ndarray:
    path = find_file(dirs, (f"{stem}.gz", stem), ("mnist",))
    if verify and path.name in MD5:
        verify_digest(path, MD5[path.name], "md5")
    return read_idx(path)


def _prepare(dirs: list[Path], out: Path, verify: bool) -> None:
    x_test = _read(dirs, "t10k-images-idx3-ubyte", verify)
    y_test = _read(dirs, "t10k-labels-idx1-ubyte", verify)
    y_train = _read(dirs, "train-labels-idx1-ubyte", verify)
    try:
        find_file(dirs, ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte"), ("mnist",))
    except DataError:  # only a missing file falls back; a corrupt one is an error
        partial = find_file(dirs, ("mnist_train_partial.npz",), ("mnist",))
        x_train = load_npz(partial, ("x_train",))["x_train"]
        source = str(partial)
    else:
        x_train = _read(dirs, "train-images-idx3-ubyte", verify)
        source = "idx"
    y_train = y_train[: len(x_train)]
    save_parts(
        out,
        {
            "train": (x_train[..., None], y_train.astype(np.int64), None),
            "test": (x_test[..., None], y_test.astype(np.int64), None),
        },
        {"train_images": source},
    )


def register() -> None:
    """Register ``mnist`` (called once by ``dyve.data``)."""
    DATASETS.add(
        "mnist",
        DatasetSpec(
            "mnist",
            "MNIST handwritten digits, idx format (28x28 grey)",
            CLASSES,
            _prepare,
            {
                "train": ("train", slice(0, 55_000)),
                "val": ("train", slice(55_000, 60_000)),
                "test": ("test", slice(0, None)),
            },
            {"val": "Only a prefix of the MNIST training images was prepared."},
        ),
    )
