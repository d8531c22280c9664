"""Policies run on cached outputs, the baselines, and sweeps over lambda or a threshold.

:func:`evaluate` follows each sample through the graph as a policy decides and reports where
it stopped, what it paid and whether it was right. Baselines: fixed thresholds on max
probability or entropy (a cascade that never jumps), the oracle (cheapest correct path per
sample) and one node alone (the backbone is the last exit).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dyve.mechanisms.adaptive.graph import Outputs, PolicyGraph, check_inputs
from dyve.mechanisms.adaptive.policy import (
    THRESHOLD_KINDS,
    LearnedPolicy,
    Policy,
    ThresholdPolicy,
    fit_learned,
)


@dataclass(frozen=True)
class PolicyResult:
    """Per sample: where it stopped (index into ``names``), what it paid, whether it was right,
    and which nodes it evaluated (``path``, bool ``[N, num_nodes]``)."""

    names: tuple[str, ...]
    stop_node: Tensor
    cost: Tensor
    correct: Tensor
    path: Tensor

    @property
    def accuracy(self) -> float:
        """Percent correct."""
        return 100.0 * float(self.correct.double().mean())

    @property
    def mean_cost(self) -> float:
        return float(self.cost.mean())

    @property
    def stop_fraction(self) -> dict[str, float]:
        """Share of the samples that stopped at each node."""
        counts = torch.bincount(self.stop_node, minlength=len(self.names)).double()
        return dict(zip(self.names, (counts / len(self.stop_node)).tolist(), strict=True))

    @property
    def ran_fraction(self) -> dict[str, float]:
        """Share of the samples that evaluated each node (on their path)."""
        shares = self.path.double().mean(0) if len(self.path) else self.path.double().sum(0)
        return dict(zip(self.names, shares.tolist(), strict=True))

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary: accuracy (percent), mean cost, stop fractions."""
        return dict(
            accuracy=self.accuracy, mean_cost=self.mean_cost, stop_fraction=self.stop_fraction
        )


def _result(
    graph: PolicyGraph, outputs: Outputs, stop: Tensor, cost: Tensor, path: Tensor, topk: int
) -> PolicyResult:
    losses = torch.stack([outputs.loss(n, topk) for n in graph.names], 1)
    correct = losses.gather(1, stop[:, None]).squeeze(1) == 0
    return PolicyResult(graph.names, stop, cost, correct, path)


def evaluate(
    graph: PolicyGraph, outputs: Outputs, policy: Policy, *, topk: int = 1, policy_cost: float = 0.0
) -> PolicyResult:
    """Run ``policy`` on the cached outputs: paths, costs (plus ``policy_cost`` per decision
    evaluated: 1 for "stop vs continue", then the choice decisions up to the one that picks),
    and top-k correctness at the stopping node. Terminal nodes stop without asking the policy.
    """
    check_inputs(graph, outputs, topk, policy_cost)
    n = outputs.n
    path = torch.zeros(n, len(graph.nodes), dtype=torch.bool)
    path[:, 0] = True
    stop_node = torch.full((n,), -1, dtype=torch.int64)
    cost = torch.zeros(n, dtype=torch.float64)
    for name in graph.topological():
        i, node = graph.index(name), graph.node(name)
        idx = path[:, i].nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        cost[idx] += node.cost
        if not node.children:
            stop_node[idx] = i
            continue
        m = len(node.children)
        stop, child = policy.decide(name, outputs.probs(name)[idx])
        if stop.shape != idx.shape or child.shape != idx.shape:
            raise ValueError(
                f"the policy answered at {name!r} with shapes {stop.shape}, {child.shape}"
            )
        stop, child = stop.cpu().bool(), child.cpu().long()
        moving = ~stop
        if ((child[moving] < 0) | (child[moving] >= m)).any():
            raise ValueError(f"the policy picked a child outside [0, {m}) at {name!r}")
        decisions = torch.where(stop, 1, 1 + (child + 1).clamp(max=m - 1))
        cost[idx] += policy_cost * decisions.double()
        stop_node[idx[stop]] = i
        for j, c in enumerate(node.children):
            path[idx[moving & (child == j)], graph.index(c)] = True
    return _result(graph, outputs, stop_node, cost, path, topk)


def _path_mask(graph: PolicyGraph, nodes: Iterable[str]) -> Tensor:
    mask = torch.zeros(len(graph.nodes), dtype=torch.bool)
    mask[[graph.index(n) for n in nodes]] = True
    return mask


def evaluate_node(
    graph: PolicyGraph, outputs: Outputs, name: str, *, topk: int = 1
) -> PolicyResult:
    """One node alone: every sample follows the cheapest path to ``name`` and stops there."""
    check_inputs(graph, outputs, topk, 0.0)
    i = graph.index(name)
    cost, nodes = graph.cheapest_paths()[name]
    n = outputs.n
    stop = torch.full((n,), i, dtype=torch.int64)
    path = _path_mask(graph, nodes).expand(n, -1).clone()
    return _result(graph, outputs, stop, torch.full((n,), cost, dtype=torch.float64), path, topk)


def oracle(graph: PolicyGraph, outputs: Outputs, topk: int = 1) -> PolicyResult:
    """Per sample the cheapest path to a correct node, else the root alone: the least cost of
    the best achievable accuracy (node costs only, no policy overhead)."""
    check_inputs(graph, outputs, topk, 0.0)
    paths = graph.cheapest_paths()
    costs = torch.tensor([paths[n][0] for n in graph.names], dtype=torch.float64)
    masks = torch.stack([_path_mask(graph, paths[n][1]) for n in graph.names])
    losses = torch.stack([outputs.loss(n, topk) for n in graph.names], 1)
    candidates = torch.where(losses == 0, costs, math.inf)
    stop = candidates.argmin(1)  # the first minimum: the root where no node is right
    return _result(graph, outputs, stop, costs[stop], masks[stop], topk)


def sweep_learned(
    graph: PolicyGraph,
    fit_outputs: Outputs,
    eval_outputs: Outputs,
    lams: Iterable[float],
    *,
    features: str = "both",
    topk: int = 1,
    l2: float = 1e-3,
    policy_cost: float = 0.0,
) -> list[tuple[float, LearnedPolicy, PolicyResult]]:
    """Fit one policy per ``lam`` on ``fit_outputs`` and evaluate it on ``eval_outputs``."""
    out = []
    for lam in lams:
        pol = fit_learned(
            graph, fit_outputs, lam, features=features, topk=topk, l2=l2, policy_cost=policy_cost
        )
        out.append(
            (lam, pol, evaluate(graph, eval_outputs, pol, topk=topk, policy_cost=policy_cost))
        )
    return out


def sweep_threshold(
    graph: PolicyGraph,
    eval_outputs: Outputs,
    kind: str,
    thresholds: Iterable[float],
    *,
    topk: int = 1,
    policy_cost: float = 0.0,
) -> list[tuple[float, ThresholdPolicy, PolicyResult]]:
    """Evaluate the threshold cascade at each (fixed, not fitted) threshold."""
    out = []
    for t in thresholds:
        pol = ThresholdPolicy(kind, float(t))
        out.append((t, pol, evaluate(graph, eval_outputs, pol, topk=topk, policy_cost=policy_cost)))
    return out


def threshold_grid(kind: str, n: int, num_classes: int = 10) -> tuple[float, ...]:
    """``n`` evenly spaced thresholds plus the one where nobody stops early.

    ``max_prob``: 0 .. 1, then ``math.inf`` (a float32 softmax can reach exactly 1.0, so 1.0
    still lets some samples stop). ``entropy``: -1 (never), then 0 .. ln(num_classes) (the
    maximum entropy: everyone stops at the root).
    """
    if n < 2:
        raise ValueError(f"a threshold grid needs n >= 2, got {n}")
    steps = [i / (n - 1) for i in range(n)]
    if kind == "max_prob":
        return (*steps, math.inf)
    if kind == "entropy":
        return (-1.0, *(s * math.log(num_classes) for s in steps))
    raise ValueError(f"unknown threshold kind {kind!r}; choose from {THRESHOLD_KINDS}")
