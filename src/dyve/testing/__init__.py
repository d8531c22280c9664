"""Testing helpers shipped with dyve: the mechanism contract suite (:mod:`.contract`)."""

from dyve.testing.contract import CASES, CHECKS, ContractCase

__all__ = ["CASES", "CHECKS", "ContractCase"]
