"""Early exit in dyve's native runtime: backbone, exit heads and policies as one program.

Per module, a batch-1 ResNet-56 costs about twice what the same network costs as one
native program (:mod:`dyve.mechanisms.dyvedeep.program`), so an early exit timed per module
gives away the runtime's share that network selection, DyVEDeep and LC-Net keep. Run as
one program per segment with the heads and policies called from Python in between, it
still paid about 0.5 ms per call in that Python (``benchmarks/NOTES.md``, session 22).

:class:`ExitProgram` splits the backbone's fx graph at its exit points (:func:`split_at`)
and lowers the chain *segment, its exit's head, the exit's decision, next segment, ...* as
one program: the heads' layers are dense kernel sites like the backbone's, and each
decision is an exit op (``fast_exit.cpp``) that evaluates the exit's policy on the head's
softmax in C++; a sample that leaves gets the head's logits as its output and runs none of
the later ops. Each sample runs its own path (the program runs samples independently), so
a batch needs no compaction. Outputs match the per-module fast path to float rounding
(batch norms folded), and so do the decisions unless a policy's score sits within rounding
of its threshold. :meth:`ExitProgram.run_exits` also says where each sample left.

Limitations: every segment must take one tensor and give one (a skip connection across an
exit point is refused, the per-module path runs instead); only exit-only networks run this
way (no gated unit or site); the heads must lower (conv, batch norm, ReLU, fixed-window
pooling, linear).
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import torch
from torch import fx, nn
from torch.fx.passes.split_module import split_module

from dyve.dynamic.exits import ExitPoint, exit_unit
from dyve.mechanisms.adaptive.policy import FEATURE_KINDS
from dyve.mechanisms.dyvedeep import native
from dyve.mechanisms.dyvedeep.lower import EXIT, Unsupported, trace
from dyve.mechanisms.dyvedeep.program import Program

if TYPE_CHECKING:
    from dyve.dynamic.net import DynamicNet
    from dyve.mechanisms.adaptive.early_exit import ExitModule

#: an exit's policy tensors (see ExitModule): their identity and version keep a program valid
_POLICY = ("weight", "bias", "mean", "std")
_POLICY_CODES = {"max_prob": 1, "entropy": 2, "learned": 3}  # DyveExit.policy
_version = operator.attrgetter("_version")


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


class _Decide(nn.Module):
    """Where an exit decides, in the chain traced for the program (logits pass through;
    the lowering turns it into an exit op)."""

    def __init__(self, point: str, exit: ExitModule) -> None:
        super().__init__()
        self.point, self.exit = point, exit

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits


class _Chain(nn.Module):
    """The backbone's segments with each exit's head and decision after its segment."""

    def __init__(self, segments: list[fx.GraphModule], exits: list[tuple[str, ExitModule]]):
        super().__init__()
        self.segments = nn.ModuleList(segments)
        self.heads = nn.ModuleList(ex.head for _, ex in exits)
        self.decide = nn.ModuleList(_Decide(p, ex) for p, ex in exits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for k, seg in enumerate(self.segments):
            x = seg(x)
            if k < len(self.decide):
                self.decide[k](self.heads[k](x))
        return x


class ExitProgram(Program):
    """``net`` with its exits at ``points`` as one native program (see module docstring)."""

    leaves = (_Decide,)

    def __init__(self, net: DynamicNet, points: list[ExitPoint], x: torch.Tensor) -> None:
        self.exits = [(p.name, _exit_of(p)) for p in points]
        #: per exit: its module, its native decision, each stored policy's rows and biases
        self._decisions: list[tuple[ExitModule, Any, list[tuple[int, int, int]], list[float]]] = []
        chain = _Chain(split_at(net.backbone, [p.name for p in points]), self.exits)
        super().__init__(chain, x)
        self._policies = self._policy_tensors()
        self._policy_key = list(map(_version, self._policies))

    def _policy_tensors(self) -> list[torch.Tensor]:
        return [getattr(ex, name) for _, ex in self.exits for name in _POLICY]

    def valid(self, x: torch.Tensor) -> bool:
        """:meth:`Program.valid`, and the exits' stored policies are those built from
        (checked also when frozen: fitting policies replaces them)."""
        if not super().valid(x):
            return False
        now = self._policy_tensors()
        return all(map(operator.is_, now, self._policies)) and (
            list(map(_version, now)) == self._policy_key
        )

    def run_exits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits and, per sample, the index of the exit point it left at (-1: it
        reached the end), from what the program ran."""
        logits, _, changed = self.run(x)
        left = changed[[self.site_names.index(exit_unit(p)) for p, _ in self.exits]]
        at = torch.where(left.any(0), left.to(torch.int64).argmax(0), -1)
        return logits, at

    def _block(self, node: fx.Node, arg: fx.Node, src: fx.Node, unit: nn.Module) -> None:
        """An exit's decision: a :class:`native.DyveExit` holding every stored learned
        policy; which policy decides, and how, is read at each call (:meth:`_sync`)."""
        if not isinstance(unit, _Decide):
            raise Unsupported(f"{node.name}: a gated block")
        ex = unit.exit
        e = native.DyveExit()
        (e.classes,) = self._shapes[arg]
        e.dim = ex.weight.shape[1]
        weight, mean, std = (
            self._keep(getattr(ex, n), torch.float64) for n in ("weight", "mean", "std")
        )
        row = e.dim * weight.element_size()
        rows = [
            (weight.data_ptr() + i * row, mean.data_ptr() + i * row, std.data_ptr() + i * row)
            for i in range(weight.shape[0])
        ]
        self._decisions.append((ex, e, rows, ex.bias.tolist()))
        self._native.append(e)
        self._op(EXIT, node, src, exit=e, params={"slot": len(self.site_names)})
        self.site_names.append(exit_unit(unit.point))

    def _sync(self) -> None:
        """Each exit's policy as its module says now (knobs are not baked into the program:
        a stage table switches between forced paths and the policy on every call)."""
        for ex, e, rows, biases in self._decisions:
            code = _POLICY_CODES.get(ex.policy, 0)
            if code == 0 and ex.forced is not None and rows:
                code = 3  # a forced run pays the stored learned policy (EarlyExit.force)
            e.policy, e.threshold = code, ex.threshold
            e.forced = -1 if ex.forced is None else int(ex.forced)
            if code == 3:
                e.features = FEATURE_KINDS.index(ex.feature_kind)
                k = min(5, e.classes)
                dim = (e.classes, k + 2, e.classes + k + 2)[e.features]
                if dim != e.dim:
                    raise RuntimeError(
                        f"{ex.feature_kind} features of {e.classes} classes are {dim} values; "
                        f"the stored policies read {e.dim}"
                    )
                e.weight, e.mean, e.std = rows[ex.index]
                e.bias = biases[ex.index]


def _exit_of(point: ExitPoint) -> ExitModule:
    """The early exit at ``point`` (a program runs one exit per point)."""
    from dyve.mechanisms.adaptive.early_exit import ExitModule

    exits = list(point.exits.values())
    if len(exits) != 1 or not isinstance(exits[0], ExitModule):
        raise Unsupported(f"exit point {point.name}: not one early exit")
    return exits[0]
