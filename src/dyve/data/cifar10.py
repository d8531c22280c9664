"""CIFAR-10 in three forms: the official python archive, the JPEG tree, and the exact subset.

* ``cifar10``: the official ``cifar-10-python.tar.gz`` (or its extracted
  ``cifar-10-batches-py/``), from a local path or downloaded from the official site
  with its MD5 verified. The batches are pickles; they are read with a restricted
  unpickler that only builds numpy arrays, lists, dicts and strings.
* ``cifar10-jpeg``: the 60,000 images as JPEG files (``train/<class>/NNNN.jpg``), put
  back in the original order with ``cifar10_labels_canonical.npz``: file ``NNNN`` of
  class ``c`` is the NNNN-th image of class ``c`` in the original order.
* ``cifar10-exact``: the original pixels of the first 1,017 images of each batch
  (6,102 images). Its ``test`` split is the 1,017 exact test images; its ``train``
  split the 5,085 exact training images (all inside the standard train split, so it
  has no ``val``).
"""

from __future__ import annotations

import io
import pickle
import sys
import tarfile
import urllib.request
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from dyve._io import file_digest, verify_digest
from dyve.data.core import DATASETS, DatasetSpec, find_file, load_npz, save_parts
from dyve.errors import ChecksumError, DataError

CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE = "cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddbe65a98e6a5d5b8f6d",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
#: SHA-256 of the files of the shared data release (``../shared/data/SHA256SUMS``).
SHA256 = {
    "cifar10_jpeg.tar.gz": "097287809041e0a666355dfce11470ba1b3f2631fe910d8793c716253f10b297",
    "cifar10_labels_canonical.npz": "bf7d4743346d3e16eaab30406c0be35d85aa59bf3c68c42e7de6727d35d7d8bb",  # noqa: E501
    "cifar10_exact_partial.npz": "4aa04276d5d0bace9196b264c8477f24773de8be26ff1feb679e93fe40235008",
}
N_TRAIN, N_VAL = 45_000, 5_000
STANDARD_SPLITS: dict[str, tuple[str, slice | None]] = {
    "train": ("train", slice(0, N_TRAIN)),
    "val": ("train", slice(N_TRAIN, N_TRAIN + N_VAL)),
    "trainval": ("train", slice(0, N_TRAIN + N_VAL)),
    "test": ("test", slice(0, None)),
    # the two halves of test, for weights whose val is not held out (the akamaster ResNets
    # saw all 50,000 training images): fit policies on test-a, report on test-b only
    "test-a": ("test", slice(0, 5_000)),
    "test-b": ("test", slice(5_000, 10_000)),
}


# ---------------------------------------------------------------- python archive
class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays (what CIFAR batches contain)."""

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        # Python 3 writes bytes as _codecs.encode(str, "latin1") in protocol 2 pickles.
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def read_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode one pickled CIFAR-10 batch into uint8 ``[N,32,32,3]`` images and labels."""
    try:
        d = _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
        raw = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as exc:
        raise DataError(
            f"{where}: not a CIFAR-10 python batch (expected a pickled dict with "
            f"b'data' [N,3072] uint8 and b'labels'): {exc}"
        ) from None
    if raw.ndim != 2 or raw.shape[1] != 3072 or len(labels) != len(raw):
        raise DataError(f"{where}: expected data [N,3072] and N labels, got {raw.shape}")
    return raw.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def read_python_archive(
    path: Path, verify: bool = True
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read ``train`` (batches 1-5) and ``test`` from the archive or extracted folder."""
    blobs: dict[str, bytes] = {}
    if path.is_dir():
        folder = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
        for name in BATCH_MD5:
            f = folder / name
            if not f.exists():
                raise DataError(f"{f}: missing CIFAR-10 batch file")
            if verify:
                verify_digest(f, BATCH_MD5[name], "md5")
            blobs[name] = f.read_bytes()
    else:
        if verify:
            verify_digest(path, ARCHIVE_MD5, "md5")
        try:
            with tarfile.open(path, "r:gz") as tar:
                for m in tar.getmembers():
                    base = Path(m.name).name
                    if m.isfile() and base in BATCH_MD5:
                        fh = tar.extractfile(m)
                        assert fh is not None
                        blobs[base] = fh.read()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DataError(f"{path}: truncated or not a gzip tar archive ({exc})") from None
        missing = sorted(set(BATCH_MD5) - set(blobs))
        if missing:
            raise DataError(f"{path}: archive lacks {', '.join(missing)}")
    parts = {n: read_batch(b, f"{path}:{n}") for n, b in blobs.items()}
    train = [parts[f"data_batch_{i}"] for i in range(1, 6)]
    return {
        "train": (np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train])),
        "test": parts["test_batch"],
    }


def download(dest_dir: Path) -> Path:
    """Download the official archive into ``dest_dir`` and verify its MD5."""
    dest = dest_dir / ARCHIVE
    if dest.exists() and file_digest(dest, "md5") == ARCHIVE_MD5:
        return dest
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".part")
    try:
        with urllib.request.urlopen(URL, timeout=60) as r, open(tmp, "wb") as fh:
            while chunk := r.read(1 << 20):
                fh.write(chunk)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(
            f"could not download {URL} ({exc}); pass --source with a local copy of {ARCHIVE}"
        ) from None
    try:
        verify_digest(tmp, ARCHIVE_MD5, "md5")
    except ChecksumError:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(dest)
    return dest


def _prepare_python(dirs: list[Path], out: Path, verify: bool) -> None:
    try:
        path = find_file(dirs, (ARCHIVE, "cifar-10-batches-py"))
    except DataError as exc:  # say why it downloads: a wrong --source lands here too
        print(f"{exc}; downloading it instead", file=sys.stderr)
        path = download(out.parent / "downloads")
    arrays = read_python_archive(path, verify)
    save_parts(out, {k: (x, y, None) for k, (x, y) in arrays.items()}, {"archive": str(path)})


# ---------------------------------------------------------------- JPEG tree
def canonical_positions(labels: np.ndarray) -> dict[int, np.ndarray]:
    """For each class, the original positions of its images in order (file NNNN -> [NNNN])."""
    return {c: np.flatnonzero(labels == c) for c in range(len(CLASSES))}


def decode_jpeg_tree(
    tar_path: Path, y_train: np.ndarray, y_test: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Decode every JPEG of the tar into arrays in the original CIFAR-10 order."""
    from PIL import Image
    from tqdm import tqdm

    labels = {"train": y_train, "test": y_test}
    pos = {s: canonical_positions(y) for s, y in labels.items()}
    out = {s: np.zeros((len(y), 32, 32, 3), np.uint8) for s, y in labels.items()}
    seen = {s: np.zeros(len(y), bool) for s, y in labels.items()}
    try:
        with tarfile.open(tar_path, "r:gz") as tar:
            for m in tqdm(tar, total=60_022, desc="decode cifar10-jpeg", unit="file"):
                parts = Path(m.name).parts
                if not m.isfile() or len(parts) < 3 or not parts[-1].endswith(".jpg"):
                    continue
                split, cls, fname = parts[-3], parts[-2], parts[-1]
                if split not in out or cls not in CLASSES:
                    raise DataError(f"{tar_path}: unexpected member {m.name}")
                c, k = CLASSES.index(cls), int(fname[:-4])
                if k >= len(pos[split][c]):
                    raise DataError(f"{tar_path}: {m.name} has no label in the canonical order")
                fh = tar.extractfile(m)
                assert fh is not None
                img = Image.open(io.BytesIO(fh.read())).convert("RGB")
                if img.size != (32, 32):
                    raise DataError(f"{tar_path}: {m.name} is {img.size}, expected 32x32")
                i = pos[split][c][k]
                out[split][i] = np.asarray(img)
                seen[split][i] = True
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise DataError(f"{tar_path}: truncated or corrupt archive ({exc})") from None
    for s, ok in seen.items():
        if not ok.all():
            raise DataError(f"{tar_path}: {int((~ok).sum())} {s} images missing from the archive")
    return {s: (out[s], labels[s]) for s in out}


def _checked(path: Path, verify: bool) -> Path:
    if verify and path.name in SHA256:
        verify_digest(path, SHA256[path.name])
    return path


def _prepare_jpeg(dirs: list[Path], out: Path, verify: bool) -> None:
    sub = ("cifar10-jpeg",)
    tar_path = _checked(find_file(dirs, ("cifar10_jpeg.tar.gz",), sub), verify)
    lab_path = _checked(find_file(dirs, ("cifar10_labels_canonical.npz",), sub), verify)
    lab = load_npz(lab_path, ("y_train", "y_test"))
    arrays = decode_jpeg_tree(tar_path, lab["y_train"], lab["y_test"])
    save_parts(
        out,
        {k: (x, y, None) for k, (x, y) in arrays.items()},
        {"jpeg": str(tar_path), "labels": str(lab_path)},
    )


# ---------------------------------------------------------------- exact subset
def _prepare_exact(dirs: list[Path], out: Path, verify: bool) -> None:
    path = _checked(
        find_file(dirs, ("cifar10_exact_partial.npz",), ("cifar10-exact-partial",)), verify
    )
    keys = tuple(f"{p}_data_batch_{i}" for p in "xy" for i in range(1, 6))
    z = load_npz(path, (*keys, "x_test_batch", "y_test_batch"))
    xs, ys, idx = [], [], []
    for i in range(1, 6):
        x = z[f"x_data_batch_{i}"]
        xs.append(x)
        ys.append(z[f"y_data_batch_{i}"][: len(x)])
        idx.append((i - 1) * 10_000 + np.arange(len(x)))
    xt = z["x_test_batch"]
    save_parts(
        out,
        {
            "train": (np.concatenate(xs), np.concatenate(ys), np.concatenate(idx)),
            "test": (xt, z["y_test_batch"][: len(xt)], np.arange(len(xt))),
        },
        {"exact": str(path)},
    )


def register() -> None:
    """Register the three CIFAR-10 datasets (called once by ``dyve.data``)."""
    DATASETS.add(
        "cifar10",
        DatasetSpec(
            "cifar10",
            "CIFAR-10, official python archive (local path or download)",
            CLASSES,
            _prepare_python,
            STANDARD_SPLITS,
        ),
    )
    DATASETS.add(
        "cifar10-jpeg",
        DatasetSpec(
            "cifar10-jpeg",
            "CIFAR-10, all 60k images as JPEG, original order (mean abs. error 5.8/255)",
            CLASSES,
            _prepare_jpeg,
            STANDARD_SPLITS,
        ),
    )
    DATASETS.add(
        "cifar10-exact",
        DatasetSpec(
            "cifar10-exact",
            "CIFAR-10 original pixels of 6,102 images (first 1,017 of each batch)",
            CLASSES,
            _prepare_exact,
            {
                "train": ("train", slice(0, None)),
                "val": ("train", None),
                "test": ("test", slice(0, None)),
            },
            {"val": "Its training images all lie in the first 45,000 (the train split)."},
        ),
    )
