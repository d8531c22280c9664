"""The mechanism contract, generated for every case of every registered mechanism."""

from __future__ import annotations

from pathlib import Path

import pytest

from dyve.mechanisms import MECHANISMS
from dyve.testing import CASES, CHECKS, ContractCase


@pytest.mark.parametrize("check", sorted(CHECKS))
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_contract(case: ContractCase, check: str, tmp_path: Path) -> None:
    CHECKS[check](case, tmp_path)


def test_every_registered_mechanism_has_a_case() -> None:
    covered = {c.mechanism for c in CASES}
    missing = set(MECHANISMS.names()) - covered
    assert not missing, f"mechanisms without a contract case in dyve.testing.CASES: {missing}"
