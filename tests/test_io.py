"""Run-folder guards of ``dyve._io``: what an ``--out`` may overwrite, what a page may read."""

from __future__ import annotations

from pathlib import Path

import pytest

from dyve._io import check_out, read_run, write_json
from dyve.errors import DyveError

ROOT = Path(__file__).resolve().parents[1]
LCNET_RUN = ROOT / "docs/results/lcnet/runs/lcnet_l04_c002"
D2NN_RUN = ROOT / "docs/results/d2nn/runs/chain/alone_half"


def test_check_out_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(DyveError, match="is a file, not a folder"):
        check_out(tmp_path / "f.txt")


def test_check_out_new_empty_and_plain_folders_pass(tmp_path: Path) -> None:
    check_out(tmp_path / "new")  # does not exist yet
    check_out(tmp_path)  # empty
    (tmp_path / "index.md").write_text("a report")
    check_out(tmp_path, {"model": "m"})  # holds no run
    assert not (tmp_path / "new").exists()  # the check creates nothing


def test_check_out_same_run_again_other_run_refused(tmp_path: Path) -> None:
    write_json(tmp_path / "config.json", {"model": "m", "split": "test", "batch_size": 8})
    check_out(tmp_path, {"model": "m", "split": "test"})  # the same: may be written again
    with pytest.raises(DyveError, match="already holds another run"):
        check_out(tmp_path, {"model": "other", "split": "test"})
    with pytest.raises(DyveError, match="already holds another run"):
        check_out(tmp_path)  # a command that never writes into a run


def test_check_out_record_file(tmp_path: Path) -> None:
    write_json(tmp_path / "export.json", {"source": "runs/a"})
    check_out(tmp_path, {"source": "runs/a"}, record="export.json")
    with pytest.raises(DyveError, match="already holds another run"):
        check_out(tmp_path, {"source": "runs/b"}, record="export.json")
    other = tmp_path / "run"
    write_json(other / "config.json", {"config": {}})  # a run, but no export.json
    with pytest.raises(DyveError, match="already holds another run"):
        check_out(other, {"source": "runs/a"}, record="export.json")


def test_read_run_recognises_its_command(tmp_path: Path) -> None:
    cfg, m = read_run(LCNET_RUN, "dyve lcnet train", "method")
    assert cfg["config"]["method"] == "lcnet"
    assert "top1" in m
    with pytest.raises(DyveError, match="not a run of `dyve lcnet train`"):
        read_run(D2NN_RUN, "dyve lcnet train", "method")
    with pytest.raises(DyveError, match=r"no config\.json"):
        read_run(tmp_path, "dyve d2nn train", "arch")
