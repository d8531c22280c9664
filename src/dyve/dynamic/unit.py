"""A unit: one module of the backbone (a residual block, a stage) that gates may skip per sample.

The unit holds the original module and the gates that mechanisms attached to it. For each
batch, every gate returns a per-sample bool "run" decision (or None: run all); the unit
runs where all gates agree. Samples that skip get the unit's *skip output*: what the block
computes with its residual branch removed, ``act(shortcut(x))`` (the shortcut is the input
itself for an identity shortcut; ``act`` is the block's activation after the merge, if it
is a module).

Back-ends: ``emulated`` computes everyone and masks (cost ``simulated``); ``fast`` runs
only the rows that need it (cost ``executed``); at batch 1 that is a plain ``if``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from dyve.dynamic import runtime
from dyve.dynamic.trace import RAN, SKIPPED, Trace

#: answers of a gate's single-sample path checked against the generic path, per unit
SINGLE_CHECKS = 8


class Gate(Protocol):
    """What a mechanism attaches to a unit: a per-sample decision and its own cost."""

    def decide(self, x: torch.Tensor) -> torch.Tensor | None:
        """Bool ``[N]`` (True = run) for the batch ``x``, or None when the gate is off."""

    def overhead_macs(self, x: torch.Tensor) -> float | torch.Tensor:
        """MACs the decision costs per sample when the gate is on (0 for statistics only);
        a ``[N]`` tensor when samples pay differently."""

    # Optional: ``run_macs() -> [N] tensor | None``, the unit's per-sample cost when it runs
    # after the last ``decide`` (a gate that narrows the block, e.g. skips channels);
    # None or absent: the unit's static MACs.
    # Optional: ``forward_single(x, unit) -> tensor | None``, the unit's whole output for one
    # sample in the fast back-end when nothing is traced (a straight-line equivalent of
    # decide + module); None: take the generic path. See :meth:`Unit.forward`.


@dataclass
class RunState:
    """Shared by a DynamicNet and its units during one call."""

    backend: str = "fast"
    trace: Trace | None = None
    #: rows of the original batch that the current tensors hold (None = all of them;
    #: a mechanism that drops samples mid-network, such as an early exit, narrows it)
    rows: torch.Tensor | None = None


class Unit(nn.Module):
    """A gated wrapper around one backbone module (see the module docstring)."""

    def __init__(
        self,
        name: str,
        module: nn.Module,
        state: RunState,
        *,
        macs: int,
        skip_path: str | None = None,
        skip_macs: int = 0,
        skip_act: str | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.module = module
        self.macs = macs
        self.skip_macs = skip_macs
        self.skip_path = skip_path  # submodule of `module` giving the skip output; None = identity
        self.skip_act = skip_act  # submodule of `module` applied after the merge; None = none
        self.gates = nn.ModuleDict()
        self._state = state
        #: the only gate has a single-sample path (and how many answers were checked)
        self._single = False
        self._single_checked = 0

    def skip_output(self, x: torch.Tensor) -> torch.Tensor:
        """What a skipping sample gets: ``act(shortcut(x))``."""
        out: torch.Tensor = x
        if self.skip_path is not None:
            out = self.module.get_submodule(self.skip_path)(out)
        if self.skip_act is not None:
            act = self.module.get_submodule(self.skip_act)
            if out is x and getattr(act, "inplace", False):
                out = out.clone()  # never modify the block's input in place
            out = act(out)
        return out

    def add_gate(self, mechanism: str, gate: nn.Module) -> None:
        """Attach a mechanism's gate (one per mechanism)."""
        if mechanism in self.gates:
            raise ValueError(f"{self.name}: {mechanism} already gates this unit")
        self.gates[mechanism] = gate
        self._single = len(self.gates) == 1 and hasattr(gate, "forward_single")
        self._single_checked = 0

    def decide(self, x: torch.Tensor) -> tuple[torch.Tensor | None, list[nn.Module]]:
        """AND of all gates' decisions, and the gates that decided (their overhead is paid).

        A gate that returns None is off: it neither decides nor costs anything.
        """
        run: torch.Tensor | None = None
        active = []
        for gate in self.gates.values():
            d = gate.decide(x)  # type: ignore[operator]
            if d is None:
                continue
            active.append(gate)
            if d.dtype != torch.bool or d.device != x.device:
                d = d.to(device=x.device, dtype=torch.bool)
            run = d if run is None else run & d
        return run, active

    @staticmethod
    def overhead(gates: list[nn.Module], x: torch.Tensor) -> torch.Tensor | float:
        """Summed per-sample MACs of the decisions of ``gates`` (asked only when tracing)."""
        total: torch.Tensor | float = 0.0
        for gate in gates:
            o = gate.overhead_macs(x)  # type: ignore[operator]
            total = total + (o.detach().cpu().double() if torch.is_tensor(o) else float(o))
        return total

    def run_macs(self) -> torch.Tensor | float:
        """Per-sample MACs of the unit when it runs (a gate may narrow it; see :class:`Gate`)."""
        for gate in self.gates.values():
            fn = getattr(gate, "run_macs", None)
            v = fn() if fn is not None else None
            if v is not None:
                return v.detach().cpu().double()
        return float(self.macs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        st = self._state
        if x.shape[0] == 1 and st.backend == "fast" and st.trace is None and self._single:
            out = self._forward_single(x)
            if out is not None:
                return out
        return self._forward_batch(x)

    def _forward_single(self, x: torch.Tensor) -> torch.Tensor | None:
        """The only gate's ``forward_single``; its first :data:`SINGLE_CHECKS` answers are
        compared with the generic path, and one that differs disables it for good."""
        (gate,) = self.gates.values()
        out: torch.Tensor | None = gate.forward_single(x, self)  # type: ignore[operator]
        if out is None or self._single_checked >= SINGLE_CHECKS:
            return out
        ref = self._forward_batch(x)
        if not torch.equal(out, ref):
            warnings.warn(
                f"{self.name}: the single-sample path of its gate differs from the generic "
                "path; using the generic path",
                RuntimeWarning,
                stacklevel=2,
            )
            self._single = False
        self._single_checked += 1
        return ref

    def _forward_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Decide, then run the rows that run (any batch; the trace is charged)."""
        st = self._state
        run, active = self.decide(x)
        n = x.shape[0]
        if run is None:
            out = self.module(x)
            run = torch.ones(n, dtype=torch.bool)
        elif n == 1 and st.backend == "fast":  # one sync, a plain if
            out = self.module(x) if bool(run) else self.skip_output(x)
        elif bool(run.all()):
            out = self.module(x)
        elif st.backend == "emulated":
            out = runtime.masked(x, run, self.module, self.skip_output)
        else:
            out = runtime.gather_scatter(x, run, self.module, self.skip_output)
        if st.trace is not None:
            self._account(st.trace, st.rows, run.cpu(), self.overhead(active, x))
        return out

    def _account(
        self,
        trace: Trace,
        rows: torch.Tensor | None,
        run: torch.Tensor,
        overhead: torch.Tensor | float,
    ) -> None:
        # a handful of whole-vector ops: this runs once per unit per batch (see NOTES.md)
        status = torch.where(run, RAN, SKIPPED).to(torch.int8)
        ran = torch.as_tensor(self.run_macs(), dtype=torch.float64)
        cost = torch.where(run, ran, float(self.skip_macs)) + overhead
        trace.charge(self.name, rows, status, cost)
