"""Network selection (Bolukbasi et al. 2017): a graph of whole networks and a policy over it.

Several independently trained networks of rising cost are nodes of a
:class:`~dyve.mechanisms.adaptive.graph.PolicyGraph`; by default each network may stop,
go to the next one, or jump to the largest (the paper's A -> G -> R with the A -> R jump).
:class:`Selection` really runs it: every sample starts at the root network; after each
network the policy sees only that network's softmax and sends each sample on; samples that
go on to the same network are gathered and run together (batch compaction), so a batch
never computes a network for a sample that does not need it. The trace charges each sample
the MACs of every network it ran, plus the policy's own MACs (``executed`` cost).

``native=True`` (default): ``forward`` runs each network as a native program (every layer
a dense kernel site, batch norms folded; :mod:`dyve.mechanisms.dyvedeep.program`) where
it can be lowered and the kernels are built, else as the PyTorch module; outputs agree to
about 1e-5. ``run`` keeps the PyTorch modules (the measured accuracy), and
:meth:`Selection.dense_runner` gives a network in the same runtime, so a bench can state
the runtime's share of a speedup.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from dyve.cost.accumulator import CostAccumulator
from dyve.dynamic.frozen import Freezable
from dyve.dynamic.trace import RAN, DynamicResult, Trace
from dyve.mechanisms.adaptive.graph import Node, PolicyGraph
from dyve.mechanisms.adaptive.policy import Policy


def cascade_graph(names: Sequence[str], macs: Sequence[float]) -> PolicyGraph:
    """Each network may stop, go to the next, or jump to the last (the largest)."""
    if len(names) < 2:
        raise ValueError("network selection needs at least two networks")
    last = names[-1]
    nodes = []
    for i, (name, cost) in enumerate(zip(names, macs, strict=True)):
        nxt = names[i + 1 : i + 2]
        children = tuple(dict.fromkeys([*nxt, last])) if name != last else ()
        nodes.append(Node(name, float(cost), children))
    return PolicyGraph(tuple(nodes))


class Selection(Freezable):
    """Networks plus a policy over their graph; ``run`` executes it with real skipping."""

    def __init__(
        self,
        networks: dict[str, nn.Module],
        graph: PolicyGraph,
        policy: Policy,
        *,
        policy_macs: float = 0.0,
        native: bool = True,
    ) -> None:
        super().__init__()
        missing = [n for n in graph.names if n not in networks]
        if missing:
            raise ValueError(f"no network for graph nodes {missing}")
        self.networks = nn.ModuleDict({k: v.eval() for k, v in networks.items()})
        self.graph = graph
        self.policy = policy
        self.policy_macs = policy_macs  # per decision evaluated
        #: run the networks as native programs in ``forward`` (see module docstring)
        self.native = native
        self._programs: dict[str, Any] = {}  # name -> program, or None: not lowerable

    def _network(self, name: str, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """Network ``name`` for ``forward`` on ``x``: its native program when possible."""
        net = self.networks[name]
        if not self.native or x.dtype != torch.float32 or x.device.type != "cpu":
            return net
        prog = self._programs.get(name, False)  # False: not tried; None: not lowerable
        if prog is False or (prog is not None and not prog.valid(x)):
            prog = self._programs[name] = self._program(net, x)
        return net if prog is None else prog

    def _program(self, dense: nn.Module, x: torch.Tensor) -> Any:
        """``dense`` as a native program for inputs like ``x`` (None: not lowerable, or the
        kernels are unavailable, or ``native`` is off)."""
        from dyve.mechanisms.dyvedeep.program import dense_program

        return dense_program(dense, x, self.frozen) if self.native else None

    def drop_programs(self) -> None:
        """Forget the networks' native programs (rebuilt on their next call)."""
        self._programs = {}

    def dense_runner(self, dense: nn.Module, x: torch.Tensor) -> Any:
        """``dense`` in the runtime :meth:`forward` runs its networks in, called as it calls
        them (checked first: :meth:`~dyve.mechanisms.dyvedeep.program.Program.checked`;
        frozen when this selection is), or None (not lowerable, the kernels unavailable, or
        ``native`` off)."""
        from dyve.mechanisms.dyvedeep.program import dense_reference

        return dense_reference(dense, x, self.frozen) if self.native else None

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles drop the programs (native structures holding raw addresses)."""
        return {**self.__dict__, "_programs": {}}

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits only: the same routing as :meth:`run` without the trace's bookkeeping
        (what a deployment runs and what latency is measured on, as for DynamicNet)."""
        return self._route_one(x) if x.shape[0] == 1 else self._route(x, None)

    @torch.no_grad()
    def run(self, x: torch.Tensor) -> DynamicResult:
        """Logits and the per-sample trace: which networks ran, and their MACs."""
        n = x.shape[0]
        trace = Trace(n, CostAccumulator(n, "executed"))
        for name in self.graph.names:
            trace.record(name, torch.empty(0, dtype=torch.int64), RAN)
        return DynamicResult(self._route(x, trace), trace)

    def _route_one(self, x: torch.Tensor) -> torch.Tensor:
        """One sample: the policy decides on plain floats (``Policy.decide_one``: no small
        tensor ops between networks, which cost most right after a network has run)."""
        name = self.graph.names[0]
        while True:
            logits: torch.Tensor = self._network(name, x)(x)
            children = self.graph.node(name).children
            if not children:
                return logits
            probs = torch.softmax(logits.float(), 1)[0].tolist()
            pick = self.policy.decide_one(name, probs)
            if pick is None:
                return logits
            name = children[pick]

    def _route(self, x: torch.Tensor, trace: Trace | None) -> torch.Tensor:
        """Run the graph; charge ``trace`` (when given) with every network and decision."""
        n = x.shape[0]
        out: torch.Tensor | None = None
        pending = {self.graph.names[0]: torch.arange(n)}
        for name in self.graph.topological():
            rows = pending.pop(name, None)
            if rows is None or rows.numel() == 0:
                continue
            node = self.graph.node(name)
            whole = rows.numel() == n
            xs = x if whole else x[rows]
            net = self.networks[name] if trace is not None else self._network(name, xs)
            logits: torch.Tensor = net(xs)
            if trace is not None:
                trace.charge(name, rows, RAN, node.cost)
            if not node.children and whole:
                return logits
            if out is None:
                out = logits.new_zeros((n, logits.shape[1]))
            if not node.children:
                out[rows] = logits
                continue
            stop, child = self.policy.decide(name, torch.softmax(logits.float(), 1))
            stop, child = stop.cpu(), child.cpu()
            if trace is not None:
                asked = _decisions(stop, child, len(node.children)) * self.policy_macs
                trace.cost.add(asked, rows, scalar_ops=2 * asked)
            if whole and bool(stop.all()):
                return logits
            out[rows[stop]] = logits[stop.to(logits.device)]
            for j, c in enumerate(node.children):
                go = rows[(~stop) & (child == j)]
                if go.numel():
                    pending[c] = torch.cat([pending[c], go]) if c in pending else go
        assert out is not None
        return out


def _decisions(stop: torch.Tensor, child: torch.Tensor, children: int) -> torch.Tensor:
    """Decisions each sample's policy evaluated: stop, then the choice chain up to its pick."""
    asked = torch.ones(len(stop), dtype=torch.float64)
    if children > 1:
        asked += torch.where(stop, 0, torch.clamp(child + 1, max=children - 1)).double()
    return asked
