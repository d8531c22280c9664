"""Download of the official CIFAR-10 archive: checksum verified, mismatch refused, offline error.

The official URL is swapped for a local ``file://`` URL, so no network is needed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from dyve.data import cifar10
from dyve.errors import ChecksumError, DataError

# tests/data/conftest.py blocks downloads for every other test; these call the real one.
download = cifar10.download


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> bytes:
    payload = b"pretend this is cifar-10-python.tar.gz" * 100
    src = tmp_path / "server" / cifar10.ARCHIVE
    src.parent.mkdir()
    src.write_bytes(payload)
    monkeypatch.setattr(cifar10, "URL", src.as_uri())
    return payload


def test_download_verifies_md5(
    served: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", hashlib.md5(served).hexdigest())
    got = download(tmp_path / "dl")
    assert got.read_bytes() == served
    assert got.name == cifar10.ARCHIVE


def test_download_refuses_a_checksum_mismatch(served: bytes, tmp_path: Path) -> None:
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        download(tmp_path / "dl")
    assert not list((tmp_path / "dl").iterdir()), "a bad download must not be kept"


def test_download_failure_names_the_way_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cifar10, "URL", (tmp_path / "missing.tar.gz").as_uri())
    with pytest.raises(DataError, match="pass --source"):
        download(tmp_path / "dl")


def test_a_source_without_the_archive_says_why_it_downloads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dyve import data

    wrong = tmp_path / "afile.txt"
    wrong.write_text("not the archive")
    with pytest.raises(AssertionError, match="tried to download"):  # the guard's refusal
        data.prepare("cifar10", source=wrong, root=tmp_path / "d")
    err = capsys.readouterr().err
    assert f"could not find {cifar10.ARCHIVE}" in err
    assert "downloading it instead" in err
