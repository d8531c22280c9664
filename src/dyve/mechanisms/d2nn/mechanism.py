"""D2NN (Liu & Deng, 2018) as a mechanism: the controllers of a D2NN graph decide per input.

The backbone is a :class:`~dyve.mechanisms.d2nn.module.D2Graph` (built from the graph
language, e.g. the zoo's ``d2nn_*_cifar`` models); called plainly it runs every controller
at its static action. Attaching :class:`D2NN` binds the graph to the dynamic network's run
state, so its controllers decide with the test-time policy (argmax Q), the back-end chosen
on the net runs or skips each node per sample, and the trace gets every node's status and
cost, controllers included (the graph charges its nodes itself).

Knob ``bias`` (None = off: static actions, controllers not evaluated): the action taken is
``argmax_a Q(s, a) - bias * cost(a)``, where ``cost(a)`` is the normalised MACs the action
commits to. ``bias=0`` is the trained policy; a positive bias trades accuracy for cost
without retraining (a dyve addition: the paper traces its curves by retraining with
several lambda, which ``dyve d2nn train`` does too).

On the fast back-end, with the greedy policy, ``net(x)`` runs the whole graph as one
native program (:mod:`dyve.mechanisms.d2nn.program`); traced runs (``net.run``), the
static network (knob off: the identity contract) and other policies run per module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch

from dyve.errors import DyveError
from dyve.mechanisms.base import MECHANISMS
from dyve.mechanisms.d2nn.module import D2Graph
from dyve.mechanisms.dyvedeep.runner import NativeRunner

if TYPE_CHECKING:
    from collections.abc import Callable

    from torch import nn

    from dyve.dynamic.net import DynamicNet
    from dyve.mechanisms.dyvedeep.program import Program


class Greedy:
    """Test-time policy: ``argmax_a Q - bias * cost(a)``."""

    def __init__(self, costs: dict[str, torch.Tensor], bias: float = 0.0) -> None:
        self.costs = costs
        self.bias = bias

    def __call__(self, name: str, q: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if self.bias:
            q = q - self.bias * self.costs[name].to(q)
        return q.argmax(1)


class EpsGreedy(Greedy):
    """Training policy: a uniformly random action with probability ``eps``, else greedy."""

    def __init__(
        self, costs: dict[str, torch.Tensor], eps: float, generator: torch.Generator
    ) -> None:
        super().__init__(costs)
        self.eps = eps
        self.generator = generator

    def __call__(self, name: str, q: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        greedy = super().__call__(name, q.detach(), rows)
        m, k = q.shape
        explore = torch.rand(m, generator=self.generator) < self.eps
        rand = torch.randint(0, k, (m,), generator=self.generator)
        return torch.where(explore.to(greedy.device), rand.to(greedy.device), greedy)


@dataclass(frozen=True)
class D2NNConfig:
    """Settings of :class:`D2NN`."""

    #: None = controllers off (static actions); else the cost bias of the greedy policy. Knob.
    bias: float | None = None


class D2NN(NativeRunner):
    """Per-input decisions of a D2NN graph's controllers (see the module docstring)."""

    name = "d2nn"
    config_class = D2NNConfig
    knob_names = ("bias",)

    def attach(self, net: DynamicNet) -> None:
        graph = net.backbone
        if not isinstance(graph, D2Graph):
            raise DyveError(
                f"d2nn attaches to a D2NN graph (dyve.mechanisms.d2nn), not {type(graph).__name__}"
            )
        self._graph = graph
        graph.run_state = net._state
        net.self_charged += ["nodes", "controllers"]
        net.deciders.append(graph.controllers)
        self._costs = graph.action_costs()
        self.set_knob("bias", self.config.bias)

    def set_knob(self, knob: str, value: Any) -> None:
        self._check_knob(knob)
        value = None if value is None else float(value)
        self.config = D2NNConfig(bias=value)
        graph = getattr(self, "_graph", None)
        if graph is not None:
            graph.policy = None if value is None else Greedy(self._costs, value)

    def lower(self, net: DynamicNet, x: torch.Tensor) -> Program | None:
        """The graph with its greedy policy as one program; None (per module) for the
        static network and other policies."""
        from dyve.mechanisms.d2nn.program import GraphProgram

        graph = cast(D2Graph, net.backbone)
        return GraphProgram(graph, x) if type(graph.policy) is Greedy else None

    def dense_runner(
        self, net: DynamicNet, dense: nn.Module, x: torch.Tensor
    ) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The static graph ``dense`` as a program (controllers not evaluated), called
        checked as ``net(x)`` calls its own; None when ``net`` runs per module."""
        from dyve.mechanisms.d2nn.program import GraphProgram
        from dyve.mechanisms.dyvedeep.program import dense_reference

        if self.fast_runner(net, x) is None or not isinstance(dense, D2Graph):
            return None
        return dense_reference(dense, x, net.frozen, GraphProgram)

    def parameters(self, net: DynamicNet) -> Any:
        yield from cast(D2Graph, net.backbone).controllers.parameters()


def register() -> None:
    MECHANISMS.add("d2nn", D2NN)
