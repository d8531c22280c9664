"""The dynamic network, its units, the trace, batch compaction, and saving."""

from dyve.dynamic.net import BACKENDS, DynamicNet, equip
from dyve.dynamic.save import describe, load, save
from dyve.dynamic.trace import APPROXIMATED, NOT_REACHED, RAN, SKIPPED, DynamicResult, Trace
from dyve.dynamic.unit import Unit

__all__ = [
    "APPROXIMATED",
    "BACKENDS",
    "NOT_REACHED",
    "RAN",
    "SKIPPED",
    "DynamicNet",
    "DynamicResult",
    "Trace",
    "Unit",
    "describe",
    "equip",
    "load",
    "save",
]
