"""File helpers shared by data, runs and checkpoints: atomic writes and checksums.

Everything dyve writes goes through :func:`atomic_write` (write a temp file in the same
folder, fsync, then ``os.replace``), so a crash mid-write never leaves a half-written
file under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from dyve.errors import ChecksumError, DataError


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def _temp_beside(path: Path) -> Iterator[str]:
    """Yield a temp file name next to ``path``; rename it over ``path`` if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _umask_mode())  # mkstemp makes 0600 files; use the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; on success fsync it and rename it over ``path``."""
    with _temp_beside(Path(path)) as tmp, open(tmp, mode) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def atomic_save(path: str | os.PathLike[str], writer: Callable[[str], None]) -> None:
    """Atomically create ``path`` with a library writer that takes a file name.

    For writers such as ``torch.save``/``safetensors.torch.save_file`` that want a path.
    """
    with _temp_beside(Path(path)) as tmp:
        writer(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (keys in insertion order)."""
    with atomic_write(path, "w") as fh:
        json.dump(obj, fh, indent=2)
        fh.write("\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file with an error that names the file when it is missing or broken."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_digest(path: str | os.PathLike[str], expected: str, algorithm: str = "sha256") -> None:
    """Raise :class:`ChecksumError` unless ``path`` has the expected digest."""
    got = file_digest(path, algorithm)
    if got != expected:
        raise ChecksumError(
            f"{path}: {algorithm} checksum mismatch (expected {expected}, got {got}); "
            "the file is corrupt or not the expected release, refusing to load it"
        )


def save_npy(path: str | os.PathLike[str], arr: Any) -> None:
    """Atomically write a numpy array as ``.npy`` (no suffix is appended to ``path``)."""
    import numpy as np

    def writer(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, arr)

    atomic_save(path, writer)


def jsonable(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), for exact comparisons."""
    return json.loads(json.dumps(value))
