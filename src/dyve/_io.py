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

from dyve.errors import ChecksumError, DataError, DyveError


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


def check_out(
    out: Path, made_by: dict[str, Any] | None = None, record: str = "config.json"
) -> None:
    """Refuse, before any work, an ``--out`` whose files the command would clobber: a file
    that is not a folder, or a folder holding another run (``config.json``, which every
    run writes, or ``record``, the file this command describes its run in).

    The run is this command's own, and may be written again (a re-score), only when its
    ``record`` holds every item of ``made_by``; without ``made_by`` every run is another.
    """
    if out.exists() and not out.is_dir():
        raise DyveError(f"--out {out} is a file, not a folder")
    path = out / record
    if path.is_file():
        saved = read_json(path)
        if (
            made_by is not None
            and isinstance(saved, dict)
            and all(saved.get(k) == v for k, v in jsonable(made_by).items())
        ):
            return
    elif not (out / "config.json").is_file():
        return
    raise DyveError(f"{out} already holds another run; pick a new --out (or delete that folder)")


def read_run(run: Path, command: str, key: str) -> tuple[Any, Any]:
    """A run's ``config.json`` and ``metrics.json`` as written, refusing with one line a
    folder that ``command`` did not make: ``key`` is in neither its config (the ``config``
    section where there is one) nor its metrics."""
    for name in ("config.json", "metrics.json"):
        if not (run / name).is_file():
            raise DyveError(f"{run}: no {name}; not a finished run of `{command}`")
    cfg, m = read_json(run / "config.json"), read_json(run / "metrics.json")
    inner = cfg.get("config", cfg) if isinstance(cfg, dict) else {}
    if not (isinstance(m, dict) and isinstance(inner, dict) and (key in inner or key in m)):
        raise DyveError(f"{run}: not a run of `{command}`")
    return cfg, m


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
