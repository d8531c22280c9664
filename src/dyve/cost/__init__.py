"""Cost counting in MACs (one multiply-add = 1; FLOPs = 2 x MACs), with other ops listed apart.

* :func:`static_cost` / :class:`CostTable`: per-layer cost of the dense model;
* :class:`CostCounter`: eager per-op counter over any forward pass;
* :class:`CostAccumulator`: per-sample cost of what actually ran, ``executed`` or ``simulated``.
"""

from dyve.cost.accumulator import COST_MODES, CostAccumulator, CostMode
from dyve.cost.counter import CostCounter
from dyve.cost.handles import register_handle
from dyve.cost.static import CONVENTION, CostRow, CostTable, static_cost

__all__ = [
    "CONVENTION",
    "COST_MODES",
    "CostAccumulator",
    "CostCounter",
    "CostMode",
    "CostRow",
    "CostTable",
    "register_handle",
    "static_cost",
]
