"""The dataset abstraction: image arrays, named splits, a registry, and the on-disk cache.

Every dataset in dyve ends up as a uint8 ``[N, H, W, C]`` array plus int64 labels
(:class:`ImageSet`). Sources (archives, JPEG trees, idx files) are converted once by
``prepare`` into ``.npy`` files under the data directory, so later runs start in seconds.

Splits are fixed and documented (see ``docs/data.md``): for CIFAR-10, ``train`` is the
first 45,000 training images, ``val`` the last 5,000 (all calibration, thresholds and
policies are fitted on val) and ``test`` the 10,000 test images (reported, never tuned on).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dyve._io import read_json
from dyve.errors import DataError
from dyve.registry import Registry

DEFAULT_DATA_DIR = Path("~/.cache/dyve/data")
#: Folders searched for raw sources when ``prepare``/``load`` get no ``source``
#: (relative paths are taken from the current directory). ``DYVE_SOURCE`` (a list
#: separated by ``os.pathsep``) comes first.
DEFAULT_SOURCES = ("../shared/data", "data")


@dataclass(frozen=True)
class ImageSet:
    """Images of one split: ``images`` uint8 ``[N, H, W, C]``, ``labels`` int64 ``[N]``."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    name: str
    split: str
    #: Position of each image in the dataset's canonical order (for provenance).
    index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise DataError(
                f"{self.name}/{self.split}: images must be uint8 [N,H,W,C], "
                f"got {self.images.dtype} {self.images.shape}"
            )
        if len(self.labels) != len(self.images):
            raise DataError(
                f"{self.name}/{self.split}: {len(self.images)} images but {len(self.labels)} labels"
            )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Image shape as (C, H, W), the layout models take."""
        _, h, w, c = self.images.shape
        return (c, h, w)

    def subset(self, indices: np.ndarray | slice) -> ImageSet:
        """A new ImageSet with the selected images (in the given order)."""
        idx = self.index if len(self.index) else np.arange(len(self), dtype=np.int64)
        return ImageSet(
            np.ascontiguousarray(self.images[indices]),
            np.asarray(self.labels[indices]),
            self.classes,
            self.name,
            self.split,
            np.asarray(idx[indices]),
        )


@dataclass(frozen=True)
class DatasetSpec:
    """How to prepare and read one named dataset.

    ``prepare(source_dirs, out_dir, verify)`` converts raw files into the cache;
    ``splits`` maps a split name to ``(cache part, selector)`` where the selector picks
    rows of that part (a slice) and ``None`` means the split does not exist.
    """

    name: str
    description: str
    classes: tuple[str, ...]
    prepare: Callable[[list[Path], Path, bool], None]
    splits: dict[str, tuple[str, slice | None]]
    #: Why a split is unavailable (shown in the error), keyed by split name.
    notes: dict[str, str] = field(default_factory=dict)


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def data_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """Resolve the data directory: argument, else ``$DYVE_DATA``, else ``~/.cache/dyve/data``."""
    chosen = path or os.environ.get("DYVE_DATA") or DEFAULT_DATA_DIR
    return Path(chosen).expanduser()


def source_dirs(source: str | os.PathLike[str] | None = None) -> list[Path]:
    """Folders to look for raw files in: ``source`` alone if given, else the defaults."""
    if source is not None:
        p = Path(source).expanduser()
        if not p.exists():
            raise DataError(f"{p}: source path does not exist")
        return [p]
    env = [Path(s) for s in os.environ.get("DYVE_SOURCE", "").split(os.pathsep) if s]
    return [p.expanduser() for p in (*env, *map(Path, DEFAULT_SOURCES)) if p.exists()]


def cache_path(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """Folder holding the prepared arrays of dataset ``name``."""
    return data_dir(root) / name


def is_prepared(name: str, root: str | os.PathLike[str] | None = None) -> bool:
    """True when the cache of ``name`` is complete (its ``meta.json`` exists)."""
    return (cache_path(name, root) / "meta.json").exists()


def prepare(
    name: str,
    source: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str] | None = None,
    *,
    verify: bool = True,
    force: bool = False,
) -> Path:
    """Convert the raw files of ``name`` into the cache and return the cache folder.

    Args:
        name: a registered dataset id (``dyve data list``).
        source: a raw file or the folder that holds it; default: ``$DYVE_SOURCE`` and
            :data:`DEFAULT_SOURCES`.
        root: data directory (default :func:`data_dir`).
        verify: check known checksums and refuse files that differ.
        force: rebuild even when the cache exists.

    Example:
        >>> prepare("cifar10-jpeg", source="../shared/data/cifar10-jpeg")  # doctest: +SKIP
    """
    spec = DATASETS.get(name)
    out = cache_path(name, root)
    if is_prepared(name, root) and not force:
        return out
    dirs = source_dirs(source)
    if not dirs:
        raise DataError(
            f"{name}: no source given and none of the default source folders exist "
            f"({', '.join(DEFAULT_SOURCES)}); pass --source PATH or set DYVE_SOURCE"
        )
    out.mkdir(parents=True, exist_ok=True)
    spec.prepare(dirs, out, verify)
    return out


def load(
    name: str,
    split: str,
    root: str | os.PathLike[str] | None = None,
    *,
    source: str | os.PathLike[str] | None = None,
) -> ImageSet:
    """Load one split of a dataset, preparing the cache first when it is missing.

    Example:
        >>> val = load("cifar10-jpeg", "val")  # doctest: +SKIP
        >>> len(val)  # doctest: +SKIP
        5000
    """
    if name.startswith("folder:"):
        from dyve.data.folder import load_folder

        return load_folder(Path(name.split(":", 1)[1]), split)
    spec = DATASETS.get(name)
    if split not in spec.splits:
        raise DataError(f"{name}: unknown split {split!r}; splits: {', '.join(spec.splits)}")
    part, sel = spec.splits[split]
    if sel is None:
        raise DataError(f"{name}: split {split!r} is not available. {spec.notes.get(split, '')}")
    if not is_prepared(name, root):  # say so: a mistyped --data-dir lands here too
        print(
            f"{name}: not prepared in {cache_path(name, root)}; preparing it now (once)",
            file=sys.stderr,
        )
    folder = prepare(name, source, root)
    meta = read_json(folder / "meta.json")
    if not isinstance(meta.get("parts"), dict) or part not in meta["parts"]:
        raise DataError(
            f"{folder / 'meta.json'}: damaged cache description; "
            f"run `dyve data prepare {name} --force`"
        )
    x = _load_array(folder / f"{part}_x.npy")
    y = _load_array(folder / f"{part}_y.npy")
    idx = (
        _load_array(folder / f"{part}_index.npy")
        if (folder / f"{part}_index.npy").exists()
        else np.arange(len(y), dtype=np.int64)
    )
    if len(x) != meta["parts"][part]:
        raise DataError(
            f"{folder / f'{part}_x.npy'}: {len(x)} images, meta.json says "
            f"{meta['parts'][part]}; the cache is damaged, run `dyve data prepare {name} --force`"
        )
    n = len(x)
    start, stop, _ = sel.indices(n)
    if start >= n:
        raise DataError(
            f"{name}: split {split!r} starts at image {sel.start} of {part}, "
            f"but the cache holds {n}. {spec.notes.get(split, '')}"
        )
    if sel.stop is not None and sel.stop > n:
        warnings.warn(
            f"{name}/{split}: only {n - start} of {sel.stop - start} images are available",
            stacklevel=2,
        )
    return ImageSet(
        np.ascontiguousarray(x[start:stop]),
        np.asarray(y[start:stop], dtype=np.int64),
        spec.classes,
        name,
        split,
        np.asarray(idx[start:stop], dtype=np.int64),
    )


def _load_array(path: Path) -> np.ndarray:
    fix = f"run `dyve data prepare {path.parent.name} --force`"
    try:
        arr: np.ndarray = np.load(path, mmap_mode="r")
        return arr
    except FileNotFoundError:
        raise DataError(f"{path}: cache file missing; {fix}") from None
    except ValueError as exc:
        raise DataError(f"{path}: cache file is corrupt ({exc}); {fix}") from None


def save_parts(
    out: Path,
    parts: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    sources: dict[str, str],
) -> None:
    """Write prepared arrays atomically, then ``meta.json`` last (it marks completion)."""
    from dyve._io import save_npy, write_json

    (out / "meta.json").unlink(missing_ok=True)
    for part, (x, y, index) in parts.items():
        if x.dtype != np.uint8 or x.ndim != 4 or len(x) != len(y):
            raise DataError(f"{out.name}/{part}: bad arrays {x.dtype} {x.shape} / {y.shape}")
        save_npy(out / f"{part}_x.npy", x)
        save_npy(out / f"{part}_y.npy", y.astype(np.int64))
        if index is not None:
            save_npy(out / f"{part}_index.npy", index)
    write_json(
        out / "meta.json",
        {"parts": {k: len(v[1]) for k, v in parts.items()}, "sources": sources},
    )


def find_file(dirs: list[Path], names: tuple[str, ...], subdirs: tuple[str, ...] = ()) -> Path:
    """First existing file among ``dirs`` (or their ``subdirs``) named one of ``names``.

    A directory in ``dirs`` may itself be the file (``--source path/to/file``).
    """
    for d in dirs:
        if d.exists() and d.name in names:
            return d
        base = d.parent if d.is_file() else d
        for sub in ("", *subdirs):
            for n in names:
                p = base / sub / n if sub else base / n
                if p.exists():
                    return p
    looked = ", ".join(str(d) for d in dirs)
    raise DataError(f"could not find {' or '.join(names)} in {looked}")


def load_images(
    name: str,
    split: str,
    root: str | os.PathLike[str] | None = None,
    *,
    limit: int | None = None,
    shape: tuple[int, int, int] | None = None,
) -> ImageSet:
    """Images for a command: ``name`` may be ``sample`` (the embedded sample) or ``folder:ROOT``.

    Keeps the first ``limit`` images, and refuses an empty result or images whose
    ``(C, H, W)`` differ from ``shape`` with one clear :class:`DataError`.
    """
    if name == "sample":
        from dyve.data.sample import load_sample

        images = load_sample()
    else:
        images = load(name, split, root)
    if limit is not None:
        if limit < 1:
            raise DataError(f"limit must be >= 1, got {limit}")
        images = images.subset(slice(0, limit))
    if len(images) == 0:
        raise DataError(f"{name}/{images.split}: no images")
    if shape is not None and images.shape != tuple(shape):
        raise DataError(f"{name} images are {images.shape}, the model expects {tuple(shape)}")
    return images


def load_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of an ``.npz`` file, with one clear error if any is missing."""
    try:
        with np.load(path) as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise DataError(f"{path}: missing arrays {missing}; expected {list(keys)}")
            return {k: z[k] for k in keys}
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
