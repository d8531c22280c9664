"""A generic image-folder dataset for users' own data.

Layout: ``ROOT/<class>/<image>`` (every image in every split) or
``ROOT/<split>/<class>/<image>`` with split folders such as ``train``, ``val`` and
``test``. Classes are the sorted sub-folder names; all images must share one size
(resize them beforehand). Use it as dataset id ``folder:ROOT``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dyve.data.core import ImageSet
from dyve.errors import DataError

KNOWN_SPLITS = {"train", "val", "test", "trainval"}
EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def load_folder(root: Path, split: str) -> ImageSet:
    """Read ``root/split/<class>/*`` (or ``root/<class>/*`` when no split folders exist)."""
    from PIL import Image, UnidentifiedImageError

    root = root.expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: image folder does not exist")
    splits = [d.name for d in root.iterdir() if d.is_dir() and d.name in KNOWN_SPLITS]
    if splits and not (root / split).is_dir():
        raise DataError(f"{root}: no {split!r} folder (split folders here: {sorted(splits)})")
    base = root / split if (root / split).is_dir() else root
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{base}: expected one sub-folder per class, found none")
    images, labels = [], []
    for c, cls in enumerate(classes):
        files = sorted(p for p in (base / cls).iterdir() if p.suffix.lower() in EXTENSIONS)
        for f in files:
            try:
                img = Image.open(f)
                img.load()
            except (UnidentifiedImageError, OSError) as exc:
                raise DataError(f"{f}: not a readable image ({exc})") from None
            arr = np.asarray(img.convert("L" if img.mode in ("L", "1", "I") else "RGB"))
            images.append(arr if arr.ndim == 3 else arr[..., None])
            labels.append(c)
    if not images:
        raise DataError(f"{base}: no images with extensions {sorted(EXTENSIONS)}")
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise DataError(f"{base}: images have different sizes {sorted(shapes)}; resize them first")
    return ImageSet(
        np.stack(images), np.asarray(labels, np.int64), tuple(classes), f"folder:{root}", split
    )
