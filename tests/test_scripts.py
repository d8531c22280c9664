"""The shell scripts that produce the results pages: they parse, and the shared ``once``
helper keeps a finished run, resumes an unfinished one and starts a new one."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*ROOT.glob("scripts/*.sh"), *ROOT.glob("benchmarks/*.sh")])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_script_parses(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True)


def _once(out: Path, log: Path) -> list[str]:
    """Call ``once OUT CMD a b`` with a CMD that logs its arguments; the calls made."""
    cmd = f'source "{ROOT}/scripts/once.sh"; once "{out}" sh -c \'echo "$*" >> "{log}"\' cmd a b'
    subprocess.run(["bash", "-euo", "pipefail", "-c", cmd], check=True)
    return log.read_text().splitlines() if log.exists() else []


def test_once_starts_resumes_and_keeps(tmp_path: Path) -> None:
    out, log = tmp_path / "run", tmp_path / "log"
    assert _once(out, log) == ["a b"]  # nothing there: started
    out.mkdir()
    (out / "config.json").write_text("{}")  # crashed before or after its first epoch
    assert _once(out, log) == ["a b", "a b --resume"]
    (out / "metrics.json").write_text("{}")  # finished: kept, the command not called
    assert _once(out, log) == ["a b", "a b --resume"]
