"""The embedded demo sample: the first 1,000 CIFAR-10 test images (JPEG copy), in the package.

It lets ``dyve demo`` and the quickstart run with no data download. The file is made by
``python scripts/make_demo_sample.py --source ../shared/data`` (see ``src/dyve/_assets/README.md``
for provenance and licence).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from dyve.data.cifar10 import CLASSES
from dyve.data.core import ImageSet
from dyve.errors import DataError

SAMPLE_FILE = "cifar10_jpeg_test_sample.npz"
SAMPLE_SIZE = 1000


def sample_path() -> Path:
    """Location of the embedded sample inside the installed package."""
    return Path(str(resources.files("dyve") / "_assets" / SAMPLE_FILE))


def load_sample() -> ImageSet:
    """The embedded sample as an ImageSet (name ``cifar10-jpeg``, split ``test-sample``)."""
    path = sample_path()
    try:
        with np.load(path) as z:
            x, y, idx = z["x"], z["y"], z["index"]
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{path}: embedded demo sample missing or broken ({exc})") from None
    return ImageSet(x, y.astype(np.int64), CLASSES, "cifar10-jpeg", "test-sample", idx)


def build_sample(source: str | None, out: Path) -> None:
    """Write the sample file from the prepared ``cifar10-jpeg`` test split."""
    from dyve._io import atomic_write
    from dyve.data.core import load

    test = load("cifar10-jpeg", "test", source=source)
    sub = test.subset(slice(0, SAMPLE_SIZE))
    with atomic_write(out) as fh:
        np.savez_compressed(fh, x=sub.images, y=sub.labels, index=sub.index)
