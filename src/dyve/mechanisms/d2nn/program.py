"""D2NN in dyve's native runtime: a whole graph of modules and controllers as one program.

Per module, a D2NN graph pays PyTorch's dispatch and the graph's Python for every node it
runs: its modules are small (a few M MACs in all), so a batch-1 call costs more than the
same static network as one native program, and the skipped nodes did not show in time
(``dyve demo``: 0.75x of the dense graph for 1.34x fewer MACs, session 22). Here the graph
is lowered like any network (:mod:`dyve.mechanisms.dyvedeep.lower`): each node's layers
become kernel sites and ops, each controller's decision becomes a route op
(``fast_route.cpp``), and each node that runs for some samples only has a per-sample
flag: its ops run only where the flag is set, and where it is clear its last op fills its
output with the default its consumer expects (a sum's zero, a hierarchy's
cannot-win score). Each sample runs its own path, so a batch needs no compaction.

The decisions are the greedy policy's (``argmax Q - bias * cost``, :class:`~.mechanism.
Greedy`), or the static actions with the controllers not evaluated (the dense reference
a bench times: ``dense_program(graph, x, kind=GraphProgram)``). Outputs match the
per-module fast path to float rounding (batch norms folded), and so do the decisions
unless two Q-values tie within rounding. Merging nodes lower as ops: sum (adds),
concatenation, the last input that ran (selects) and a hierarchy's placement of class
scores (concatenation and a permutation).

Limitations (:class:`~dyve.mechanisms.dyvedeep.lower.Unsupported`, the per-module path
runs): other merging modules, controllers with more than 31 actions, a node's consumers
expecting different defaults, and a default expected from a dummy node.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn

from dyve.mechanisms.d2nn.combine import Combine, Concat, Last, Place, Sum
from dyve.mechanisms.d2nn.graph import INPUT
from dyve.mechanisms.d2nn.mechanism import Greedy
from dyve.mechanisms.d2nn.module import D2Graph
from dyve.mechanisms.dyvedeep import native
from dyve.mechanisms.dyvedeep.lower import FLAG, PERMUTE, ROUTE, SELECT, Unsupported
from dyve.mechanisms.dyvedeep.program import Program

#: flag 0: the controllers are evaluated (clear in the static network)
_EVALUATED = 0


class _Enter(nn.Module):
    """Where node ``node``'s ops start in the traced graph (its input passes through)."""

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _Mark(_Enter):
    """Node ``node``'s value (an alias of the last op's output)."""


class _Route(_Enter):
    """Controller ``node``'s decision on its Q-values (a route op)."""


class _Select(_Enter):
    """Per sample, ``b`` where node ``node`` ran, else ``a`` (a :class:`Last` merge)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return b


class _Permute(nn.Module):
    """Values reordered by ``index`` (a :class:`Place` merge after concatenation)."""

    def __init__(self, index: torch.Tensor) -> None:
        super().__init__()
        self.index: torch.Tensor
        self.register_buffer("index", index, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.index)


class _Flat(nn.Module):
    """The graph's nodes called in run order, with markers the lowering reads: a plain
    network that fx traces (the policy is not in it: flags and route ops carry it)."""

    def __init__(self, graph: D2Graph) -> None:
        super().__init__()
        self.order, self.specs, self.out = graph.plan.order, graph.specs, graph.out_name
        self.layers, self.controllers = graph.nodes, graph.controllers
        self.enter = nn.ModuleDict({n: _Enter(n) for n in self.order})
        self.mark = nn.ModuleDict({n: _Mark(n) for n in graph.nodes})
        self.route = nn.ModuleDict({n: _Route(n) for n in graph.controllers})
        self.select = nn.ModuleDict()
        self.permute = nn.ModuleDict()
        for name, mod in graph.nodes.items():
            if isinstance(mod, Combine) and type(mod) not in (Sum, Concat, Last, Place):
                raise Unsupported(f"node {name!r}: merging module {type(mod).__name__}")
            if isinstance(mod, Last):
                srcs = self.specs[name].inputs[1:]
                self.select.update({f"{name}_{k}": _Select(e.src) for k, e in enumerate(srcs)})
            if isinstance(mod, Place):
                self.permute[name] = _Permute(mod.order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vals = {INPUT: x}
        for name in self.order:
            s = self.specs[name]
            srcs = [vals[e.src] for e in s.inputs]
            self.enter[name](srcs[0])
            if s.kind == "control":
                self.route[name](self.controllers[name](srcs[0]))
            elif s.kind == "dummy":
                vals[name] = srcs[0]
            else:
                mod = self.layers[name]
                out = self._merge(name, mod, srcs) if isinstance(mod, Combine) else mod(*srcs)
                vals[name] = self.mark[name](out)
        return vals[self.out]

    def _merge(self, name: str, mod: Combine, srcs: list[torch.Tensor]) -> torch.Tensor:
        out = srcs[0]
        for k, v in enumerate(srcs[1:]):
            if isinstance(mod, Sum):
                out = out + v
            elif isinstance(mod, Last):
                out = self.select[f"{name}_{k}"](out, v)
            else:  # Concat, Place
                out = torch.cat([out, v], 1)
        return self.permute[name](out) if isinstance(mod, Place) else out


class GraphProgram(Program):
    """``graph`` with its current policy as one native program (see module docstring):
    the greedy policy, or (policy None) the static network."""

    leaves = (_Enter, _Permute)

    def __init__(self, graph: D2Graph, x: torch.Tensor) -> None:
        policy = graph.policy
        if policy is not None and type(policy) is not Greedy:
            raise Unsupported(f"the {type(policy).__name__} policy runs per module")
        self.graph = graph
        #: node -> the index of its per-sample flag (absent: it runs for every sample)
        self.flag_of: dict[str, int] = {}
        self._and: dict[str, str] = {}  # gated node -> the varying input it needs to have run
        self._fills: dict[str, float] = {}  # varying node -> the default its consumers expect
        self._value: dict[str, dict[str, Any]] = {}  # node -> the op computing its value
        self._node_now: str | None = None
        super().__init__(_Flat(graph), x)

    # ------------------------------------------------------------------ flags
    def _lower(self, graph: fx.Graph) -> None:
        self._assign_flags()
        self._knobs += [
            (self.graph, "policy", self.graph.policy),
            (self.graph, "static_actions", self.graph.static_actions),
        ]
        super()._lower(graph)
        for name, fill in self._fills.items():
            op = self._value.get(name)
            if op is None:
                raise Unsupported(f"node {name!r}: a default is expected from a dummy node")
            op["fills"], op["fill"] = 1, fill

    def _assign_flags(self) -> None:
        """A flag per node that varies: its own when a controller gates it (the route ops
        clear it), else that of its one required input."""
        g = self.graph
        self.flag_init = [int(g.policy is not None)]  # _EVALUATED
        gated = {t for c in g.plan.controllers for t in g._targets(c)}
        for name in g.plan.order:
            s = g.specs[name]
            req = [e.src for e in s.inputs if e.default is None and e.src in self.flag_of]
            if name in gated:
                self.flag_of[name] = len(self.flag_init)
                self.flag_init.append(1)
                if req:
                    self._and[name] = req[0]
            elif req:  # validate(): a node that varies has one input
                self.flag_of[name] = self.flag_of[req[0]]
            for e in s.inputs:
                if e.default is None or e.src not in self.flag_of:
                    continue
                if self._fills.setdefault(e.src, e.default) != e.default:
                    raise Unsupported(f"node {e.src!r}: its consumers expect different defaults")

    # ------------------------------------------------------------------ lowering
    def _node(self, node: fx.Node, buf: Any, fused: Any, done: Any) -> None:
        mod = self._modules.get(str(node.target)) if node.op == "call_module" else None
        if type(mod) is _Enter:
            src = buf[node.args[0]]
            buf[node] = src
            self._node_now = mod.node
            if mod.node in self._and:
                self._op(FLAG, node, src, params={"flag": self.flag_of[mod.node]})
                op = self._ops[-1]
                op.update(when=-1, when2=-1, flag2=self.flag_of[self._and[mod.node]])
                _tiny(op)
        elif type(mod) is _Mark:
            src = buf[node.args[0]]
            buf[node] = src
            mine = [op for op in self._ops if op["node"] is src and op["owner"] == mod.node]
            if mine:
                self._value[mod.node] = mine[-1]
        elif type(mod) is _Select:
            a, b = (buf[arg] for arg in node.args)
            flag = self.flag_of.get(mod.node)
            if flag is None:  # that input ran for every sample: it is the last
                buf[node] = b
            else:
                self._op(SELECT, node, a, b=b, params={"flag": flag})
                buf[node] = node
        else:
            super()._node(node, buf, fused, done)

    def _block(self, node: fx.Node, arg: fx.Node, src: fx.Node, unit: nn.Module) -> None:
        """A controller's route op, a :class:`Place` merge's permutation."""
        if isinstance(unit, _Route):
            self._route(node, src, unit.node)
        elif isinstance(unit, _Permute):
            self._op(PERMUTE, node, src)
            self._ops[-1]["index"] = self._keep(unit.index, torch.int32)
        else:
            super()._block(node, arg, src, unit)

    def _route(self, node: fx.Node, src: fx.Node, name: str) -> None:
        g = self.graph
        actions = g.specs[name].actions
        if len(actions) > 31:
            raise Unsupported(f"controller {name!r}: more than 31 actions")
        r = native.DyveRoute()
        r.actions = len(actions)
        targets = g._targets(name)
        r.ntargets = len(targets)
        flags = self._keep(torch.tensor([self.flag_of[t] for t in targets]), torch.int32)
        masks = [sum(1 << k for k, (_, nodes) in enumerate(actions) if t in nodes) for t in targets]
        r.flags, r.masks = flags.data_ptr(), self._keep(torch.tensor(masks), torch.int32).data_ptr()
        policy = g.policy
        if policy is None:
            r.fixed = g.static_choice()[name]
        else:
            assert isinstance(policy, Greedy)
            r.fixed = -1
            pen = policy.costs[name].to(torch.float32)
            pen = policy.bias * pen if policy.bias else torch.zeros_like(pen)
            r.pen = self._keep(pen).data_ptr()
        self._native.append(r)
        self._op(ROUTE, node, src)
        op = self._ops[-1]
        op.update(route=r, when2=-1)
        _tiny(op)

    def _op(self, kind: int, node: fx.Node, src: fx.Node, **kw: Any) -> None:
        """As :meth:`Lowering._op`; the op runs only where its node's flag is set (a
        controller's layers also only where controllers are evaluated)."""
        super()._op(kind, node, src, **kw)
        name = self._node_now
        op = self._ops[-1]
        op["when"] = self.flag_of.get(name, -1) if name is not None else -1
        op["when2"] = _EVALUATED if name is not None and name in self.graph.controllers else -1
        op["owner"] = name


def _tiny(op: dict[str, Any]) -> None:
    """An op that writes no value: a one-float output buffer."""
    op["out"], op["size"] = (1, 1, 1), 1
