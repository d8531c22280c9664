"""The D2NN graph as a module: execution in topological order with per-sample enable masks.

:class:`D2Graph` is built from a validated :class:`~dyve.mechanisms.d2nn.graph.GraphSpec`.
Called plainly it is the *static* network (every controller at its static action,
controllers not evaluated): the backbone the D2NN mechanism equips. :meth:`D2Graph.execute`
runs it with a policy: each controller sees its state, a policy turns the Q-values into
one action per sample, and every node runs only for the samples it is enabled for.

Back-ends (the core's :mod:`dyve.dynamic.runtime`): ``emulated`` computes a node for the
whole batch and masks (training-free checks, simulated cost); ``fast`` gathers the rows
that run, computes only those and scatters them back (at batch 1 a plain ``if``). Rows a
node did not run for hold zeros; consumers get the edge's default there. Each node's
per-sample MACs are counted once, on the first pass (which also checks shapes), so a
sample's cost is the sum over the nodes that ran for it, controllers included.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dyve.cost.counter import CostCounter
from dyve.dynamic import runtime
from dyve.dynamic.trace import RAN, SKIPPED, Trace
from dyve.mechanisms.d2nn.combine import Combine
from dyve.mechanisms.d2nn.graph import INPUT, GraphError, GraphSpec, validate

#: ``policy(controller, q [M, k], rows [M]) -> actions [M]`` for the M samples that reached it
Policy = Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Execution:
    """What :meth:`D2Graph.execute` returns."""

    out: torch.Tensor
    #: node -> bool [N]: ran (controllers: evaluated) for each sample
    ran: dict[str, torch.Tensor]
    #: controller -> [N, k] Q-values (zeros where not evaluated)
    q: dict[str, torch.Tensor]
    #: controller -> long [N] action taken (-1 where the controller was not reached)
    action: dict[str, torch.Tensor]
    #: float64 [N]: MACs of what ran for each sample
    macs: torch.Tensor


class D2Graph(nn.Module):
    """A D2NN: regular, dummy and control nodes (see the module docstring)."""

    def __init__(self, spec: GraphSpec, example: torch.Tensor) -> None:
        super().__init__()
        self.plan = validate(spec)
        self.specs = dict(spec.nodes)
        self.out_name: str = spec.out  # type: ignore[assignment]
        ctrl = set(self.plan.controllers)
        self.nodes = nn.ModuleDict({k: m for k, m in spec.modules.items() if k not in ctrl})
        self.controllers = nn.ModuleDict({k: m for k, m in spec.modules.items() if k in ctrl})
        self.policy: Policy | None = None
        #: controller -> action index replacing its static action (evaluating static paths)
        self.static_actions: dict[str, int] | None = None
        self.run_state: Any = None  # the DynamicNet's RunState, bound by the mechanism
        #: controllers see their state detached (Q-loss does not train the trunk)
        self.detach_state = True
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.node_macs: dict[str, float] = {}
        self._first_pass(example)
        self.max_path_macs = max(self.path_macs(c, controllers=True) for c in self.static_choices())

    # ------------------------------------------------------------------ structure
    def module_of(self, name: str) -> nn.Module | None:
        """The module of node ``name`` (None for a dummy)."""
        if name in self.controllers:
            return self.controllers[name]
        if name in self.nodes:
            return self.nodes[name]
        return None

    @property
    def all_macs(self) -> float:
        """MACs per sample with every regular node run (:meth:`run_all`)."""
        return sum(m for n, m in self.node_macs.items() if n not in self.controllers)

    def static_choices(self) -> list[dict[str, int]]:
        """Every combination of fixed actions, one per controller."""
        ctrls = self.plan.controllers
        sizes = [len(self.specs[c].actions) for c in ctrls]
        return [
            dict(zip(ctrls, combo, strict=True)) for combo in itertools.product(*map(range, sizes))
        ]

    def static_choice(self) -> dict[str, int]:
        """The static actions (what the plain forward takes)."""
        fixed = self.static_actions or {}
        return {c: fixed.get(c, self.specs[c].static) for c in self.plan.controllers}

    def parse_choice(self, text: str) -> dict[str, int]:
        """``"q1=stop,q2=go"`` as action indices (controllers not named keep their static)."""
        out = {}
        for item in filter(None, (t.strip() for t in text.split(","))):
            c, _, a = item.partition("=")
            if c not in self.plan.controllers:
                raise GraphError(
                    f"{item!r}: no controller {c!r}; controllers: {self.plan.controllers}"
                )
            names = self.specs[c].action_names
            if a not in names:
                raise GraphError(f"{item!r}: {c} has no action {a!r}; actions: {names}")
            out[c] = names.index(a)
        return out

    def _targets(self, controller: str) -> list[str]:
        """Nodes ``controller`` gates, in declaration order."""
        acts = self.specs[controller].actions
        return list(dict.fromkeys(t for _, nodes in acts for t in nodes))

    def path(self, choice: dict[str, int]) -> set[str]:
        """Nodes that run when every controller takes the action ``choice`` gives it."""
        ran: set[str] = {INPUT}
        enabled: dict[str, bool] = {}
        for name in self.plan.order:
            s = self.specs[name]
            ok = enabled.get(name, True) and all(
                e.src in ran for e in s.inputs if e.default is None
            )
            if ok:
                ran.add(name)
            if s.kind == "control":  # OR over this controller's actions, AND over controllers
                for t in self._targets(name):
                    on = ok and t in s.actions[choice[name]][1]
                    enabled[t] = enabled.get(t, True) and on
        return ran - {INPUT}

    def path_macs(self, choice: dict[str, int], *, controllers: bool = False) -> float:
        """MACs per sample of a static path (with or without evaluating the controllers)."""
        nodes = self.path(choice)
        if not controllers:
            nodes -= set(self.plan.controllers)
        return sum(self.node_macs[n] for n in nodes)

    def action_costs(self) -> dict[str, torch.Tensor]:
        """Per controller, per action: MACs of the nodes charged to that decision, divided by
        the most expensive path's (the immediate cost an action commits to)."""
        out = {}
        for c in self.plan.controllers:
            costs = []
            for k in range(len(self.specs[c].actions)):
                choice = {**self.static_choice(), c: k}
                nodes = [n for n in self.path(choice) if self.plan.owner[n] == c]
                costs.append(sum(self.node_macs[n] for n in nodes) / self.max_path_macs)
            out[c] = torch.tensor(costs, dtype=torch.float64)
        return out

    def dyve_detach(self) -> None:
        """Forget the dynamic network's policy and run state: the static network again."""
        self.policy = None
        self.run_state = None

    # ------------------------------------------------------------------ execution
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        st = self.run_state
        if st is None:
            return self.execute(x).out
        return self.execute(x, self.policy, backend=st.backend, trace=st.trace).out

    def execute(
        self,
        x: torch.Tensor,
        policy: Policy | None = None,
        *,
        backend: str = "fast",
        trace: Trace | None = None,
    ) -> Execution:
        """Run the graph; ``policy`` None takes every controller's static action unevaluated.

        Decisions that are the same for the whole batch (static actions, or one sample on
        the fast back-end) take a path of plain Python ifs: no masks, no syncs per node.
        """
        if backend == "fast" and (policy is None or x.shape[0] == 1):
            return self._uniform(x, policy, trace)
        n = x.shape[0]
        ones = torch.ones(n, dtype=torch.bool, device=x.device)
        vals: dict[str, torch.Tensor] = {INPUT: x}
        ran: dict[str, torch.Tensor] = {INPUT: ones}
        enabled: dict[str, torch.Tensor] = {}
        q: dict[str, torch.Tensor] = {}
        action: dict[str, torch.Tensor] = {}
        macs = torch.zeros(n, dtype=torch.float64)
        for name in self.plan.order:
            s = self.specs[name]
            need = enabled.get(name, ones)
            for e in s.inputs:
                if e.default is None:
                    need = need & ran[e.src]
            inputs = [self._value(vals, ran, e.src, e.default) for e in s.inputs]
            if s.kind == "control":
                reach = need
                fixed = self.static_choice()[name]
                act = torch.full((n,), fixed, dtype=torch.long, device=x.device)
                if policy is not None:
                    state = inputs[0].detach() if self.detach_state else inputs[0]
                    q[name] = self._rows(self.controllers[name], state, need, name, backend)
                    rows = need.nonzero().squeeze(1)
                    act = act.index_put((rows,), policy(name, q[name].index_select(0, rows), rows))
                else:
                    need = torch.zeros_like(need)  # static: the controller is not evaluated
                action[name] = torch.where(reach, act, -1)
                for t in self._targets(name):  # OR over this controller's actions
                    ks = [k for k, (_, nodes) in enumerate(s.actions) if t in nodes]
                    chosen = reach & torch.isin(act, torch.tensor(ks, device=act.device))
                    enabled[t] = enabled.get(t, ones) & chosen
            elif s.kind == "dummy":
                vals[name] = inputs[0]
            elif isinstance(self.nodes[name], Combine):
                vals[name] = self.nodes[name]([*inputs], [ran[e.src] for e in s.inputs])
            elif len(inputs) == 1:
                vals[name] = self._rows(self.nodes[name], inputs[0], need, name, backend)
            else:  # validate() guarantees such a node always runs
                vals[name] = self.nodes[name](*inputs)
            ran[name] = need
            cost = need.cpu().double() * self.node_macs[name]
            macs += cost
            if trace is not None and (s.kind != "control" or policy is not None):
                status = torch.where(need.cpu(), RAN, SKIPPED).to(torch.int8)
                trace.charge(name, None, status, cost)
        del ran[INPUT]
        return Execution(vals[self.out_name], ran, q, action, macs)

    def run_all(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Every regular and dummy node on every sample, controllers not evaluated (the
        paper's pre-training with all branches executed). Returns the output and the
        branch outputs feeding it: the output node's inputs shaped like the output (a
        cascade's heads, high-low's two branches), else the output alone."""
        n = x.shape[0]
        ones = torch.ones(n, dtype=torch.bool, device=x.device)
        vals: dict[str, torch.Tensor] = {INPUT: x}
        for name in self.plan.order:
            s = self.specs[name]
            inputs = [vals[e.src] for e in s.inputs]
            if s.kind == "control":
                continue
            if s.kind == "dummy":
                vals[name] = inputs[0]
            elif isinstance(self.nodes[name], Combine):
                vals[name] = self.nodes[name](inputs, [ones] * len(inputs))
            else:
                vals[name] = self.nodes[name](*inputs)
        out = vals[self.out_name]
        srcs = [vals[e.src] for e in self.specs[self.out_name].inputs]
        heads = [v for v in srcs if v.shape == out.shape]
        return out, heads if len(heads) > 1 else [out]

    def _uniform(self, x: torch.Tensor, policy: Policy | None, trace: Trace | None) -> Execution:
        """:meth:`execute` when every sample takes the same path (see there)."""
        n = x.shape[0]
        on: dict[str, bool] = {INPUT: True}
        enabled: dict[str, bool] = {}
        vals: dict[str, torch.Tensor] = {INPUT: x}
        q: dict[str, torch.Tensor] = {}
        action: dict[str, int] = {}
        macs = 0.0
        for name in self.plan.order:
            s = self.specs[name]
            need = enabled.get(name, True) and all(on[e.src] for e in s.inputs if e.default is None)
            inputs = [
                vals[e.src]
                if on[e.src] or not e.default
                else torch.full_like(vals[e.src], e.default)
                for e in s.inputs
            ]
            if s.kind == "control":
                k = self.static_choice()[name]
                if policy is not None:
                    state = inputs[0].detach() if self.detach_state else inputs[0]
                    rows = torch.zeros(1, dtype=torch.long)
                    q[name] = (
                        self.controllers[name](state) if need else x.new_zeros((n, len(s.actions)))
                    )
                    k = int(policy(name, q[name], rows)[0]) if need else k
                action[name] = k if need else -1
                for t in self._targets(name):
                    enabled[t] = enabled.get(t, True) and need and t in s.actions[k][1]
                need = need and policy is not None  # static: the controller is not evaluated
            elif s.kind == "dummy":
                vals[name] = inputs[0]
            elif isinstance(self.nodes[name], Combine):
                masks = [torch.full((n,), on[e.src], device=x.device) for e in s.inputs]
                vals[name] = self.nodes[name](inputs, masks)
            elif need:
                vals[name] = self.nodes[name](*inputs)
            else:
                vals[name] = x.new_zeros((n, *self.shapes[name]))
            on[name] = need
            cost = self.node_macs[name] if need else 0.0
            macs += cost
            if trace is not None and (s.kind != "control" or policy is not None):
                trace.charge(name, None, RAN if need else SKIPPED, cost)
        del on[INPUT]
        return Execution(
            vals[self.out_name],
            {k: torch.full((n,), v, device=x.device) for k, v in on.items()},
            q,
            {k: torch.full((n,), v, dtype=torch.long, device=x.device) for k, v in action.items()},
            torch.full((n,), macs, dtype=torch.float64),
        )

    @staticmethod
    def _value(
        vals: dict[str, torch.Tensor], ran: dict[str, torch.Tensor], src: str, default: float | None
    ) -> torch.Tensor:
        v = vals[src]
        if not default:  # rows that did not run already hold zeros
            return v
        return torch.where(ran[src].view(-1, *[1] * (v.dim() - 1)), v, default)

    def _rows(
        self, fn: nn.Module, x: torch.Tensor, need: torch.Tensor, name: str, backend: str
    ) -> torch.Tensor:
        shape = self.shapes[name]

        def skip(t: torch.Tensor) -> torch.Tensor:
            return t.new_zeros((t.shape[0], *shape))

        if backend == "emulated":
            return runtime.masked(x, need, fn, skip)
        return runtime.gather_scatter(x, need, fn, skip)

    # ------------------------------------------------------------------ first pass
    def _first_pass(self, example: torch.Tensor) -> None:
        """Run every node once on ``example`` (one sample): shapes and MACs per node."""
        x = example[:1]
        vals: dict[str, torch.Tensor] = {INPUT: x}
        ones = [torch.ones(1, dtype=torch.bool)]
        was = self.training
        self.eval()
        try:
            for name in self.plan.order:
                s = self.specs[name]
                inputs = [vals[e.src] for e in s.inputs]
                module = self.module_of(name)
                if module is None:
                    vals[name], macs = inputs[0], 0
                else:
                    with torch.no_grad(), CostCounter() as cc:
                        try:
                            if isinstance(module, Combine):
                                out = module(inputs, ones * len(inputs))
                            else:
                                out = module(*inputs)
                        except RuntimeError as exc:
                            shapes = [list(t.shape[1:]) for t in inputs]
                            raise GraphError(
                                f"node {name!r} fails on inputs of shapes {shapes}: {exc}"
                            ) from None
                    vals[name], macs = out, cc.total_macs
                if s.kind == "control" and tuple(vals[name].shape) != (1, len(s.actions)):
                    raise GraphError(
                        f"control node {name!r} outputs {list(vals[name].shape[1:])}, "
                        f"expected one Q-value per action ({len(s.actions)})"
                    )
                self.shapes[name] = tuple(vals[name].shape[1:])
                self.node_macs[name] = float(macs)
        finally:
            self.train(was)
