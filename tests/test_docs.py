"""Code in the docs runs as written: docs/extending.md builds and checks a mechanism."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_extending_guide_runs(tmp_path: Path) -> None:
    code = "\n".join(
        re.findall(r"```python\n(.*?)```", (DOCS / "extending.md").read_text(), flags=re.S)
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "contract passed" in proc.stdout
    assert "(executed)" in proc.stdout
