"""The shell scripts that produce the results pages: they parse and find their shared
helpers; ``once`` keeps a finished run, resumes an unfinished one and starts a new one;
``wait_all`` stops the script when a background job failed."""

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


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_a_script_that_uses_the_helpers_sources_them(script: Path) -> None:
    text = script.read_text()
    if script.name == "once.sh" or ("once " not in text and "wait_all " not in text):
        return
    lines = [line for line in text.splitlines() if line.startswith("source ")]
    assert lines, f"{script.name} calls once/wait_all without sourcing scripts/once.sh"
    rel = lines[0].split("/", 1)[1].rstrip('"')  # source "$(dirname ...)/REL"
    assert (script.parent / rel).resolve() == ROOT / "scripts" / "once.sh"


def test_wait_all_stops_the_script_when_a_job_failed(tmp_path: Path) -> None:
    slow, after = tmp_path / "slow", tmp_path / "after"
    body = (
        f'source "{ROOT}/scripts/once.sh"; (exit 3) & a=$!; (sleep 0.3; touch "{slow}") & '
        f'b=$!; wait_all $a $b; touch "{after}"'
    )
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", body])
    assert r.returncode == 3
    assert not after.exists()  # the script stopped
    assert slow.exists()  # but only once every job had ended: none left running
    ok = subprocess.run(["bash", "-euo", "pipefail", "-c", body.replace("exit 3", "exit 0")])
    assert ok.returncode == 0
