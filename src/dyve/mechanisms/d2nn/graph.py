"""D2NN's graph language: regular, control and dummy nodes joined by data and control edges.

A :class:`GraphSpec` is written in Python, one node at a time::

    g = GraphSpec()
    g.regular("trunk", trunk, "input")
    g.control("q", controller, state="trunk", actions={"low": ["low"], "high": ["high"]},
              static="high")
    g.regular("low", low_branch, "trunk")
    g.regular("high", high_branch, "trunk")
    g.regular("out", Sum(), [Edge("low", 0.0), Edge("high", 0.0)])
    g.output("out")

* **regular** nodes are ordinary modules; **control** nodes are modules that output one
  Q-value per action, and each action enables a set of nodes (the control edges);
  **dummy** nodes are the "do nothing" alternative of a decision (identity, no cost).
* A **data edge** may carry a default value, delivered to rows whose source did not run;
  an edge without one is required: the consumer runs only where its source ran.
* A node runs for a sample when every controller gating it chose an action that enables it
  (and that controller itself ran) and every required input ran.
* ``static`` names the action a controller takes when the policy is off: the graph with
  all controllers at their static action is a plain network (the backbone of the identity
  contract).

:func:`validate` checks names, acyclicity (controllers before what they gate), that the
output always runs, and that a node whose execution varies per sample has one data input;
shapes are checked by the first pass of :class:`~dyve.mechanisms.d2nn.module.D2Graph`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from torch import nn

from dyve.errors import DyveError

INPUT = "input"
KINDS = ("regular", "control", "dummy")


class GraphError(DyveError):
    """A D2NN graph that cannot run: unknown names, cycles, an output that may not run."""


@dataclass(frozen=True)
class Edge:
    """A data edge from ``src``; ``default`` is what consumers get where ``src`` did not run
    (None: required, the consumer does not run there)."""

    src: str
    default: float | None = None


@dataclass(frozen=True)
class NodeSpec:
    """One node: its kind, data inputs, and (control nodes) the actions and static choice."""

    name: str
    kind: str
    inputs: tuple[Edge, ...]
    #: control: action name -> nodes it enables
    actions: tuple[tuple[str, tuple[str, ...]], ...] = ()
    static: int = 0

    @property
    def action_names(self) -> tuple[str, ...]:
        return tuple(a for a, _ in self.actions)


EdgeLike = str | Edge


@dataclass
class GraphSpec:
    """A D2NN graph under construction (see the module docstring)."""

    nodes: dict[str, NodeSpec] = field(default_factory=dict)
    modules: dict[str, nn.Module] = field(default_factory=dict)
    out: str | None = None

    def _add(self, spec: NodeSpec, module: nn.Module | None) -> str:
        if spec.name in self.nodes or spec.name == INPUT:
            raise GraphError(f"node name {spec.name!r} is used twice (or is {INPUT!r})")
        if not spec.name.isidentifier():
            raise GraphError(f"node name {spec.name!r}: use a Python identifier")
        self.nodes[spec.name] = spec
        if module is not None:
            self.modules[spec.name] = module
        return spec.name

    def regular(self, name: str, module: nn.Module, inputs: EdgeLike | Sequence[EdgeLike]) -> str:
        """A regular node: ``module(*inputs)`` (a :class:`Combine` also gets the run masks)."""
        return self._add(NodeSpec(name, "regular", _edges(inputs)), module)

    def dummy(self, name: str, source: EdgeLike) -> str:
        """A dummy node: passes its input on unchanged and costs nothing."""
        return self._add(NodeSpec(name, "dummy", _edges(source)), None)

    def control(
        self,
        name: str,
        module: nn.Module,
        *,
        state: EdgeLike,
        actions: Mapping[str, Sequence[str]],
        static: str,
    ) -> str:
        """A control node: ``module(state)`` gives one Q-value per action (in order)."""
        if len(actions) < 2:
            raise GraphError(f"control node {name!r} needs at least two actions")
        if static not in actions:
            raise GraphError(f"control node {name!r}: static action {static!r} not in actions")
        acts = tuple((a, tuple(nodes)) for a, nodes in actions.items())
        if any(not nodes for _, nodes in acts):
            raise GraphError(f"control node {name!r}: every action enables a node (or a dummy)")
        return self._add(
            NodeSpec(name, "control", _edges(state), acts, list(actions).index(static)), module
        )

    def output(self, name: str) -> None:
        """Mark the node whose value the graph returns."""
        self.out = name


def _edges(inputs: EdgeLike | Sequence[EdgeLike]) -> tuple[Edge, ...]:
    items = [inputs] if isinstance(inputs, str | Edge) else list(inputs)
    return tuple(e if isinstance(e, Edge) else Edge(e) for e in items)


@dataclass(frozen=True)
class Plan:
    """What :func:`validate` derives: run order, ownership of costs, controllers."""

    order: tuple[str, ...]
    #: node -> the controller whose decision its cost is charged to (None: always runs)
    owner: dict[str, str | None]
    controllers: tuple[str, ...]


def validate(spec: GraphSpec) -> Plan:
    """Check ``spec`` (see the module docstring) and derive its :class:`Plan`."""
    nodes = spec.nodes
    if not nodes:
        raise GraphError("the graph has no nodes")
    if spec.out is None:
        raise GraphError("no output node: call output(name)")
    if spec.out not in nodes:
        raise GraphError(f"output {spec.out!r} is not a node")
    gated: dict[str, list[str]] = {}
    for n in nodes.values():
        if n.kind not in KINDS:
            raise GraphError(f"node {n.name!r}: unknown kind {n.kind!r}")
        if not n.inputs:
            raise GraphError(f"node {n.name!r} has no data input")
        if n.kind in ("control", "dummy") and len(n.inputs) != 1:
            raise GraphError(f"{n.kind} node {n.name!r} takes exactly one input")
        for e in n.inputs:
            if e.src != INPUT and e.src not in nodes:
                raise GraphError(f"node {n.name!r}: input {e.src!r} is not a node")
        for act, targets in n.actions:
            for t in targets:
                if t not in nodes:
                    raise GraphError(f"control {n.name!r}, action {act!r}: no node {t!r}")
                if t == spec.out:
                    raise GraphError(f"control {n.name!r} gates the output; gate its inputs")
                if n.name not in gated.setdefault(t, []):
                    gated[t].append(n.name)
    order = _toposort(nodes, gated)
    pos = {name: i for i, name in enumerate(order)}
    owner: dict[str, str | None] = {}
    varies: dict[str, bool] = {INPUT: False}
    for name in order:
        n = nodes[name]
        required = [e.src for e in n.inputs if e.default is None and e.src != INPUT]
        cands = list(gated.get(name, [])) + [o for s in required if (o := owner[s])]
        owner[name] = max(cands, key=pos.__getitem__) if cands else None
        varies[name] = bool(gated.get(name)) or any(varies[s] for s in required)
        if varies[name] and len(n.inputs) > 1:
            raise GraphError(
                f"node {name!r} runs for some samples only and has {len(n.inputs)} inputs; "
                "such nodes take one input (merge in an always-running node)"
            )
    if varies[spec.out]:
        raise GraphError(
            f"output {spec.out!r} may not run for every sample: give its inputs defaults"
        )
    controllers = tuple(n for n in order if nodes[n].kind == "control")
    return Plan(tuple(order), owner, controllers)


def _toposort(nodes: dict[str, NodeSpec], gated: dict[str, list[str]]) -> list[str]:
    """Kahn's algorithm over data and control edges, in the order nodes were declared."""
    deps = {
        name: {e.src for e in n.inputs if e.src != INPUT} | set(gated.get(name, []))
        for name, n in nodes.items()
    }
    order: list[str] = []
    done: set[str] = set()
    while len(order) < len(nodes):
        ready = [n for n in nodes if n not in done and deps[n] <= done]
        if not ready:
            stuck = sorted(n for n in nodes if n not in done)
            raise GraphError(
                f"the graph has a cycle (a controller must come before what it gates): {stuck}"
            )
        order.append(ready[0])
        done.add(ready[0])
    return order
