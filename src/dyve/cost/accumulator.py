"""Per-sample cost of what actually ran, fed by mechanisms as they execute.

A dynamic network calls :meth:`CostAccumulator.add` for each unit it runs, with the cost
of that unit and which samples of the batch it ran for. ``cost_mode`` says how honest the
figure is:

* ``executed``: the work was really done only for those samples (skipped work was not
  computed), so the figure is what the hardware did;
* ``simulated``: the work was computed for everyone and masked afterwards; the figure is
  what a real skipping implementation *would* do. Reports must label such costs.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

CostMode = Literal["executed", "simulated"]
COST_MODES: tuple[CostMode, ...] = ("executed", "simulated")


class CostAccumulator:
    """Per-sample MACs (and optionally scalar ops) of a batch of ``n`` samples.

    Example:
        >>> acc = CostAccumulator(4, "executed")
        >>> acc.add(100)                                        # ran for all samples
        >>> acc.add(50, torch.tensor([True, False, True, False]))
        >>> acc.per_sample.tolist()
        [150.0, 100.0, 150.0, 100.0]
    """

    def __init__(self, n: int, cost_mode: CostMode = "executed") -> None:
        if cost_mode not in COST_MODES:
            raise ValueError(f"cost_mode must be one of {COST_MODES}, got {cost_mode!r}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self.cost_mode: CostMode = cost_mode
        self.macs = torch.zeros(n, dtype=torch.float64)
        self.scalar_ops = torch.zeros(n, dtype=torch.float64)

    def __len__(self) -> int:
        return len(self.macs)

    def add(
        self,
        macs: float | torch.Tensor,
        where: torch.Tensor | None = None,
        *,
        scalar_ops: float | torch.Tensor | None = None,
    ) -> None:
        """Add a unit's cost for the samples in ``where`` (bool mask or indices; None = all).

        ``macs`` is a scalar (the same cost for each selected sample) or one value per
        selected sample. ``scalar_ops`` (multiplies + adds + compares) defaults to
        ``2 * macs``: a unit without overheads of its own does one multiply and one add
        per MAC.
        """
        idx = slice(None) if where is None else where.to("cpu")
        m = torch.as_tensor(macs, dtype=torch.float64).cpu()
        self.macs[idx] += m
        ops = 2 * m if scalar_ops is None else torch.as_tensor(scalar_ops, dtype=torch.float64)
        self.scalar_ops[idx] += ops.cpu()

    def extend(self, other: CostAccumulator) -> None:
        """Append another batch's samples (cost modes must match, or the result is simulated)."""
        if other.cost_mode != self.cost_mode:
            self.cost_mode = "simulated"
        self.macs = torch.cat([self.macs, other.macs])
        self.scalar_ops = torch.cat([self.scalar_ops, other.scalar_ops])

    @property
    def per_sample(self) -> torch.Tensor:
        """MACs of each sample."""
        return self.macs

    def summary(self) -> dict[str, float | str]:
        """Mean, p50, p95, min and max per-sample MACs, mean scalar ops, and the cost mode."""
        m = self.macs.numpy()
        if len(m) == 0:
            return {"cost_mode": self.cost_mode, "n": 0}
        return {
            "cost_mode": self.cost_mode,
            "n": len(m),
            "macs_mean": float(m.mean()),
            "macs_p50": float(np.percentile(m, 50)),
            "macs_p95": float(np.percentile(m, 95)),
            "macs_min": float(m.min()),
            "macs_max": float(m.max()),
            "scalar_ops_mean": float(self.scalar_ops.mean()),
        }
