"""The nodes a policy chooses among, and their outputs cached on one split.

A small DAG of *nodes* (an exit head of one network, or a whole network), each paid for when
it is evaluated, and per node the logits cached on one split: what :mod:`.policy` fits and
:mod:`.evaluate` runs policies on, with no network in the loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True)
class Node:
    """An exit head or a network: ``cost`` is paid when it is evaluated (segment plus head)."""

    name: str
    cost: float
    #: nodes that may be evaluated next, in decision order; () = terminal (samples must stop)
    children: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a node needs a non-empty name")
        if not math.isfinite(self.cost) or self.cost < 0:
            raise ValueError(f"node {self.name!r}: cost must be finite and >= 0, got {self.cost}")
        if len(set(self.children)) != len(self.children):
            raise ValueError(f"node {self.name!r} lists a child twice: {self.children}")


@dataclass(frozen=True)
class PolicyGraph:
    """The DAG of nodes; ``nodes[0]`` is the root, always evaluated first.

    Validated on construction: unique names, known children, every node reachable from the
    root, no cycle (which also guarantees a terminal node).
    """

    nodes: tuple[Node, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)
    _order: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = {n.name: i for i, n in enumerate(self.nodes)}
        if not self.nodes or len(index) < len(self.nodes):
            raise ValueError(f"a policy graph needs nodes with unique names, got {self.names}")
        for node in self.nodes:
            unknown = [c for c in node.children if c not in index]
            if unknown:
                raise ValueError(f"node {node.name!r} has unknown children {unknown}")
        done: dict[str, bool] = {}  # False while the node is on the current DFS path
        post: list[str] = []

        def visit(name: str) -> None:
            done[name] = False
            for child in self.nodes[index[name]].children:
                if child not in done:
                    visit(child)
                elif not done[child]:
                    raise ValueError(f"the policy graph has a cycle through {child!r}")
            done[name] = True
            post.append(name)

        visit(self.nodes[0].name)
        unreachable = [n for n in index if n not in done]
        if unreachable:
            raise ValueError(f"nodes not reachable from the root {self.names[0]!r}: {unreachable}")
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_order", tuple(reversed(post)))

    @classmethod
    def chain(cls, names: Sequence[str], costs: Sequence[float]) -> PolicyGraph:
        """An early-exit chain: each node's only child is the next one; the last is terminal."""
        if len(names) != len(costs):
            raise ValueError(f"{len(names)} names but {len(costs)} costs")
        return cls(
            tuple(
                Node(n, float(c), (names[i + 1],) if i + 1 < len(names) else ())
                for i, (n, c) in enumerate(zip(names, costs, strict=True))
            )
        )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes)

    def index(self, name: str) -> int:
        """Position of node ``name`` in ``nodes``."""
        if name not in self._index:
            raise ValueError(f"unknown node {name!r}; nodes: {self.names}")
        return self._index[name]

    def node(self, name: str) -> Node:
        return self.nodes[self.index(name)]

    def topological(self) -> tuple[str, ...]:
        """Node names, every node before its children (the root first)."""
        return self._order

    def cheapest_paths(self) -> dict[str, tuple[float, tuple[str, ...]]]:
        """Per node: the cost (node costs only) and nodes of the cheapest path from the root."""
        best: dict[str, tuple[float, tuple[str, ...]]] = {
            self.nodes[0].name: (self.nodes[0].cost, (self.nodes[0].name,))
        }
        for name in self._order:
            cost, path = best[name]
            for child in self.node(name).children:
                total = cost + self.node(child).cost
                if child not in best or total < best[child][0]:
                    best[child] = (total, (*path, child))
        return best


@dataclass
class Outputs:
    """Cached outputs on one split: per node ``[N, C]`` float logits, and ``[N]`` int64 labels."""

    logits: dict[str, Tensor]
    labels: Tensor

    def __post_init__(self) -> None:
        if self.labels.ndim != 1 or self.labels.dtype != torch.int64:
            raise ValueError(
                f"labels must be 1-d int64, got {tuple(self.labels.shape)} {self.labels.dtype}"
            )
        for name, x in self.logits.items():
            if x.ndim != 2 or x.shape[0] != self.n or x.shape[1] < 2:
                raise ValueError(
                    f"logits of {name!r} have shape {tuple(x.shape)}; expected [{self.n}, C >= 2]"
                )
            if not x.is_floating_point():
                raise ValueError(f"logits of {name!r} must be floating point, got {x.dtype}")
            if self.n and (self.labels.min() < 0 or self.labels.max() >= x.shape[1]):
                raise ValueError(f"labels outside [0, {x.shape[1]}) for the logits of {name!r}")

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: Tensor) -> Outputs:
        """The rows ``index`` of every node (and their labels)."""
        return Outputs({k: v[index] for k, v in self.logits.items()}, self.labels[index])

    def _logits(self, name: str) -> Tensor:
        if name not in self.logits:
            raise ValueError(f"no logits for node {name!r}; have {sorted(self.logits)}")
        return self.logits[name]

    def probs(self, name: str) -> Tensor:
        """Float32 softmax of the logits of ``name``."""
        return torch.softmax(self._logits(name).float(), 1)

    def loss(self, name: str, topk: int = 1) -> Tensor:
        """Float64 ``[N]`` 0/1 loss of ``name``: 1 where the label is not in the top-k."""
        logits = self._logits(name)
        top = logits.topk(min(topk, logits.shape[1]), 1).indices
        return (top != self.labels[:, None]).all(1).double()


def check_inputs(graph: PolicyGraph, outputs: Outputs, topk: int, policy_cost: float) -> None:
    """Refuse outputs missing a node, a top-k below 1 or a negative policy cost."""
    missing = [n for n in graph.names if n not in outputs.logits]
    if missing:
        raise ValueError(f"no outputs for nodes {missing}")
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    if not math.isfinite(policy_cost) or policy_cost < 0:
        raise ValueError(f"policy_cost must be finite and >= 0, got {policy_cost}")
