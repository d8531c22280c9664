"""Exit points: where a sample may leave the network with an early prediction.

A mechanism adds an *exit* (an ``nn.Module`` with ``evaluate(x) -> (logits, leave | None)``
and ``overhead_macs()``) at an exit point of the graph (a block or stage output):
``net.exit_point("layer1").add_exit(name, module)``. During a call the network hooks the
module at that point (the hook exists only for the call), evaluates the exit on its output
and, per sample, either lets it continue or records the exit's logits as its output.

Back-ends:

* ``fast``: samples that leave are dropped from the batch; the rest of the network runs on
  the remaining rows only (``RunState.rows`` maps them back), and when none remain it is
  not run at all. At batch 1 that is a plain early return.
* ``emulated``: every sample runs to the end; afterwards the outputs of leavers are their
  exit logits and what they would not have run is taken off their cost (``simulated``).

Cost: the exit's own MACs go to every sample that reached it; a sample that leaves at a
point pays the backbone's MACs up to that point (:meth:`BlockGraph.macs_through`) plus the
units it ran; the trace records the exit each sample took (``Trace.exit_at``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from dyve.dynamic.trace import NOT_REACHED, RAN, Trace
from dyve.dynamic.unit import RunState


class Exit(Protocol):
    """What a mechanism attaches at an exit point."""

    def evaluate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits ``[N, C]`` for the batch ``x`` and bool ``[N]`` (True = leave here),
        or None when the exit is off (then nothing is evaluated or charged)."""

    def overhead_macs(self) -> float:
        """MACs per sample of evaluating the exit (head and policy)."""


class ExitPoint(nn.Module):
    """The exits attached at one exit point of the graph (usually one)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.exits = nn.ModuleDict()

    def add_exit(self, mechanism: str, module: nn.Module) -> None:
        """Attach a mechanism's exit (one per mechanism)."""
        if mechanism in self.exits:
            raise ValueError(f"{self.name}: {mechanism} already has an exit here")
        self.exits[mechanism] = module

    def evaluate(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, float]:
        """Logits of the first active exit, who leaves (OR over exits), and their MACs."""
        logits: torch.Tensor | None = None
        leave: torch.Tensor | None = None
        overhead = 0.0
        for ex in self.exits.values():
            out, d = ex.evaluate(x)  # type: ignore[operator]
            if d is None:
                continue
            overhead += float(ex.overhead_macs())  # type: ignore[operator]
            if logits is None:
                logits, leave = out, d.to(torch.bool)
            else:
                assert leave is not None
                leave = leave | d.to(torch.bool)
        return logits, leave, overhead


class AllLeft(Exception):
    """Raised inside a call when every sample has left (fast back-end): stop the forward."""


@dataclass
class ExitState:
    """What one call collects at the exit points (see :class:`ExitRun`)."""

    n: int
    #: per original row: the logits it left with (rows that reach the end stay unset)
    logits: torch.Tensor | None = None
    #: per original row: index of the exit point it left at (-1 = reached the end)
    at: torch.Tensor = field(init=False)
    #: emulated: per exit point, the trace units recorded before it
    seen: list[set[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.at = torch.full((self.n,), -1, dtype=torch.int64)

    def store(self, rows: torch.Tensor, logits: torch.Tensor) -> None:
        """Record the logits of rows that leave."""
        if self.logits is None:
            self.logits = logits.new_zeros((self.n, *logits.shape[1:]))
        self.logits[rows.to(logits.device)] = logits


class ExitRun:
    """One call of a network with exit points (created by ``DynamicNet``, per call)."""

    def __init__(self, points: list[ExitPoint], net_state: RunState, n: int, fast: bool) -> None:
        self.points = points
        self.st = net_state  # the network's RunState: backend, trace, rows
        self.fast = fast
        self.state = ExitState(n)

    def hook(self, k: int) -> Callable[[nn.Module, Any, Any], torch.Tensor | None]:
        """The forward hook for exit point ``k``."""

        def fn(module: nn.Module, args: Any, out: Any) -> torch.Tensor | None:
            return self._at(k, out)

        return fn

    def _at(self, k: int, out: torch.Tensor) -> torch.Tensor | None:
        st, es = self.st, self.state
        logits, leave, overhead = self.points[k].evaluate(out)
        if logits is None or leave is None:
            return None
        trace: Trace | None = st.trace
        if self.fast and es.n == 1 and trace is None:  # batch 1, no bookkeeping: leave or not
            if not bool(leave):
                return None
            es.logits = logits
            raise AllLeft
        rows: torch.Tensor = st.rows if st.rows is not None else torch.arange(es.n)
        leave = leave.cpu()
        if self.fast:
            if trace is not None:
                trace.charge(exit_unit(self.points[k].name), rows, RAN, overhead)
            if not bool(leave.any()):
                return None
            es.store(rows[leave], logits[leave.to(logits.device)])
            es.at[rows[leave]] = k
            keep = ~leave
            if not bool(keep.any()):
                raise AllLeft
            st.rows = rows[keep]
            return out.index_select(0, keep.nonzero().squeeze(1).to(out.device))
        # emulated: everyone continues; remember who left first, and what ran before
        fresh = leave & (es.at[rows] < 0)
        if trace is not None:
            reached = es.at[rows] < 0
            trace.charge(exit_unit(self.points[k].name), rows[reached], RAN, overhead)
        es.store(rows[fresh], logits[fresh.to(logits.device)])
        es.at[rows[fresh]] = k
        while len(es.seen) <= k:
            es.seen.append(set())
        es.seen[k] = set(trace.units) if trace is not None else set()
        return None

    def finish(self, final: torch.Tensor | None, trace: Trace | None) -> torch.Tensor:
        """The per-sample outputs; in emulated mode also takes unrun work off the cost."""
        es, st = self.state, self.st
        if final is not None and not isinstance(final, torch.Tensor):
            raise TypeError("exit points need a backbone whose output is one tensor of logits")
        if self.fast:
            if final is not None and es.logits is None:
                return final
            assert es.logits is not None
            out = es.logits
            if final is not None:
                rows = st.rows if st.rows is not None else torch.arange(es.n)
                out[rows.to(out.device)] = final
            return out
        assert final is not None
        if es.logits is None:
            return final
        left = es.at >= 0
        out = torch.where(left.to(final.device).view(-1, 1), es.logits, final)
        if trace is not None:
            self._untrace(trace)
        return out

    def _untrace(self, trace: Trace) -> None:
        """Emulated: units a leaver would not have reached lose their cost and status."""
        es = self.state
        for k, before in enumerate(es.seen):
            rows = (es.at == k).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            for unit, parts in trace.detail.items():
                if unit in before or unit.startswith("exit:"):
                    continue
                trace.cost.add(-parts["macs"][rows], rows, scalar_ops=-parts["scalar_ops"][rows])
                for v in parts.values():
                    v[rows] = 0.0
                trace.units[unit][rows] = NOT_REACHED


def exit_unit(point: str) -> str:
    """The trace name of exit point ``point``'s evaluation (head and policy)."""
    return f"exit:{point}"
