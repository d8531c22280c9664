"""Early exit in dyve's native runtime: the backbone as one program per segment.

Per module, a batch-1 ResNet-56 costs about twice what the same network costs as one
native program (:mod:`dyve.mechanisms.dyvedeep.program`), so an early exit timed per module
gives away the runtime's share that network selection, DyVEDeep and LC-Net keep.
:class:`Segments` splits the backbone's fx graph at its exit points (a point's segment ends
with the last node its module computes), lowers each segment to a dense program and runs
them in turn; between two segments the exit point evaluates its head and policy, as on
the per-module path, through the core's :class:`~dyve.dynamic.exits.ExitRun` (batch 1
returns at the exit, a batch keeps only the rows still running). The heads run as
programs too where they lower (in PyTorch each layer of a conv head pays its own
dispatch); the policy stays in Python. Outputs match the per-module fast path to float
rounding (batch norms folded); the decisions are the same unless a policy's score sits
within rounding of its threshold.

Limitations: every segment must take one tensor and give one (a skip connection across an
exit point is refused, the per-module path runs instead), and only exit-only networks run
this way (no gated unit or site).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch
from torch import fx, nn
from torch.fx.passes.split_module import split_module

from dyve.dynamic.exits import AllLeft, ExitPoint, ExitRun
from dyve.mechanisms.dyvedeep.lower import Unsupported, trace

if TYPE_CHECKING:
    from dyve.dynamic.net import DynamicNet
    from dyve.mechanisms.adaptive.early_exit import ExitModule
    from dyve.mechanisms.dyvedeep.program import Program


def split_at(backbone: nn.Module, points: list[str]) -> list[fx.GraphModule]:
    """``backbone`` as a chain of modules, one more than ``points``: segment ``k`` ends
    after the last node computed inside module ``points[k]``."""
    gm = trace(backbone)
    nodes = list(gm.graph.nodes)
    last = {}
    for i, node in enumerate(nodes):
        for p in node.meta.get("nn_module_stack", {}):
            if p in points:
                last[p] = i
    missing = [p for p in points if p not in last]
    if missing:
        raise Unsupported(f"exit point {missing[0]} computes nothing in the traced graph")
    ends = [last[p] for p in points]
    if ends != sorted(ends):
        raise Unsupported("exit points out of the graph's order")
    part = {n: sum(i > e for e in ends) for i, n in enumerate(nodes)}
    split = split_module(gm, backbone, lambda n: part[n])
    calls = [n for n in split.graph.nodes if n.op == "call_module"]
    segs: list[fx.GraphModule] = []
    prev: Any = next(n for n in split.graph.nodes if n.op == "placeholder")
    for n in calls:
        if n.args != (prev,) or n.kwargs:
            raise Unsupported(f"segment {n.target} does not take the previous one's output alone")
        segs.append(getattr(split, str(n.target)))
        prev = n
    out = next(n for n in split.graph.nodes if n.op == "output")
    if len(segs) != len(points) + 1 or out.args != (prev,):
        raise Unsupported("the exit points do not cut the network into a chain")
    return segs


class Segments:
    """The network's backbone as dense programs between its exit points (see module doc)."""

    def __init__(self, net: DynamicNet, points: list[ExitPoint], x: torch.Tensor) -> None:
        from dyve.mechanisms.dyvedeep.program import Program

        self.net, self.points = net, points
        self.segments = split_at(net.backbone, [p.name for p in points])
        self.programs: list[Program] = []
        self.examples: list[torch.Tensor] = []  # one input per program, for its checks
        #: (exit module, its head's program, an input for its checks); the module runs the
        #: program (attribute ``program``) while this object runs the network
        self.heads: list[tuple[ExitModule, Program, torch.Tensor]] = []
        h = x[:1].clone()  # not a view: the caller's batch is not kept alive
        with torch.no_grad():
            for seg in self.segments:
                self.programs.append(Program(seg, h))
                self.programs[-1].frozen = net.frozen  # as the network (dyve.dynamic.frozen)
                self.examples.append(h)
                h = seg(h)
                if len(self.programs) <= len(points):
                    self._lower_heads(points[len(self.programs) - 1], h)

    def _lower_heads(self, point: ExitPoint, h: torch.Tensor) -> None:
        """A program for each exit head at ``point`` that lowers (the others stay eager)."""
        from dyve.mechanisms.dyvedeep.program import dense_program

        for ex in point.exits.values():
            head = getattr(ex, "head", None)
            if not isinstance(head, nn.Module) or head.training:
                continue
            prog = dense_program(head, h, self.net.frozen)
            if prog is not None:
                self.heads.append((cast("ExitModule", ex), prog, h))

    def valid(self, x: torch.Tensor, points: list[ExitPoint]) -> bool:
        """True while the exit points and every segment's weights are those built from."""
        if points != self.points or not self.programs[0].valid(x):
            return False
        progs = zip(self.programs[1:], self.examples[1:], strict=True)
        return all(p.valid(e) for p, e in progs) and all(p.valid(e) for _, p, e in self.heads)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        net._state.rows = None  # every row of the batch is running
        run = ExitRun(self.points, net._state, x.shape[0], fast=True)
        h, final = x, None
        for ex, prog, _ in self.heads:
            ex.program = prog
        try:
            try:
                for k, prog in enumerate(self.programs):
                    h = prog(h)
                    if k < len(self.points):
                        kept = run.hook(k)(self.points[k], (h,), h)
                        h = h if kept is None else kept.contiguous()
                final = h
            except AllLeft:
                pass
            return run.finish(final, None)
        finally:
            net._state.rows = None
            for ex, _, _ in self.heads:
                ex.program = None
