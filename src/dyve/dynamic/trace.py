"""The per-sample trace of a dynamic run: what each unit did for each sample, and the cost.

Every report reads from the trace, never from the mechanism's internals, so the emulated
and the fast back-end can be checked against each other decision by decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from dyve.cost.accumulator import CostAccumulator, CostMode

#: Status codes of a unit for one sample.
RAN, SKIPPED, APPROXIMATED, NOT_REACHED = 0, 1, 2, 3
STATUS_NAMES = {
    RAN: "ran",
    SKIPPED: "skipped",
    APPROXIMATED: "approximated",
    NOT_REACHED: "not reached",
}


@dataclass
class Trace:
    """Per-sample record of one batch: unit statuses and cost (MACs, scalar ops)."""

    n: int
    cost: CostAccumulator
    #: unit name -> int8 status per sample (RAN, SKIPPED, APPROXIMATED, NOT_REACHED)
    units: dict[str, torch.Tensor] = field(default_factory=dict)
    #: unit name -> cost component ("macs", "scalar_ops", or a mechanism's own parts such
    #: as "spet_saved") -> float64 per sample: the per-unit breakdown of ``cost``
    detail: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    #: exit points where samples may leave early, in order (empty: no exits attached)
    exit_names: list[str] = field(default_factory=list)
    #: per sample: index into :attr:`exit_names` of the exit it left at (-1 = the end)
    exit_at: torch.Tensor | None = None

    @classmethod
    def new(cls, n: int, cost_mode: CostMode) -> Trace:
        """An empty trace for ``n`` samples."""
        return cls(n, CostAccumulator(n, cost_mode))

    def record(self, unit: str, rows: torch.Tensor | None, status: torch.Tensor | int) -> None:
        """Set the status of ``unit`` for the samples ``rows`` (indices; None = all)."""
        if unit not in self.units:
            self.units[unit] = torch.full((self.n,), NOT_REACHED, dtype=torch.int8)
        idx = slice(None) if rows is None else rows.cpu()
        self.units[unit][idx] = torch.as_tensor(status, dtype=torch.int8).cpu()

    def charge(
        self,
        unit: str,
        rows: torch.Tensor | None,
        status: torch.Tensor | int,
        macs: float | torch.Tensor,
        scalar_ops: float | torch.Tensor | None = None,
        parts: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Record ``unit``'s status and cost for the samples ``rows`` (None = all).

        The cost goes into the batch total and into :attr:`detail` under the unit's name;
        ``scalar_ops`` defaults to ``2 * macs`` (see :class:`CostAccumulator`).
        """
        self.record(unit, rows, status)
        self.cost.add(macs, rows, scalar_ops=scalar_ops)
        m = torch.as_tensor(macs, dtype=torch.float64).cpu()
        ops = 2 * m if scalar_ops is None else torch.as_tensor(scalar_ops, dtype=torch.float64)
        idx = slice(None) if rows is None else rows.cpu()
        comps = {"macs": m, "scalar_ops": ops.cpu(), **(parts or {})}
        mine = self.detail.setdefault(unit, {})
        for key, value in comps.items():
            if key not in mine:
                mine[key] = torch.zeros(self.n, dtype=torch.float64)
            mine[key][idx] += torch.as_tensor(value, dtype=torch.float64).cpu()

    def breakdown(self) -> dict[str, dict[str, float]]:
        """Per unit, the mean over samples of each cost component."""
        return {u: {k: float(v.mean()) for k, v in d.items()} for u, d in self.detail.items()}

    def fraction(self, status: int = RAN) -> dict[str, float]:
        """Per unit, the fraction of samples with ``status``."""
        return {k: float((v == status).float().mean()) for k, v in self.units.items()}

    def exit_fraction(self) -> dict[str, float]:
        """Share of samples that left at each exit point (``"end"``: ran to the end)."""
        at = self.exit_at if self.exit_at is not None else torch.full((self.n,), -1)
        names = [*self.exit_names, "end"]
        return {
            name: float((at == (k if k < len(self.exit_names) else -1)).float().mean())
            for k, name in enumerate(names)
        }

    def summary(self) -> dict[str, Any]:
        """Cost summary, the share of samples that ran each unit, and where they left."""
        out = {**self.cost.summary(), "ran_fraction": self.fraction(RAN)}
        if self.exit_names:
            out["exit_fraction"] = self.exit_fraction()
        return out


@dataclass(frozen=True)
class DynamicResult:
    """What :meth:`DynamicNet.run` returns: logits and the per-sample trace."""

    logits: torch.Tensor
    trace: Trace

    @property
    def macs(self) -> torch.Tensor:
        """Per-sample MACs of what ran."""
        return self.trace.cost.per_sample
