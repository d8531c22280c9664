"""Learned early-exit and network-selection policies, fitted on cached outputs.

The policy-learning part of "Adaptive Neural Networks for Efficient Inference" (Bolukbasi et
al., ICML 2017), kept apart from any network so that a sweep over the trade-off ``lam`` takes
seconds. It works on a small DAG of *nodes* (an exit head of one network, or a whole network),
each with cached logits on one split and a cost paid when it is evaluated. A sample starts at
the root; at each node it either stops (the prediction is that node's) or moves to one child.

The objective is E[loss at the stopping node + lam * path cost] with the 0/1 (top-k) loss.
Costs are taken as given: the caller normalises them (for example, divides by the cost of the
full backbone) so that ``lam`` reads as "loss per unit of cost".

As in the paper, the choice at a node among stopping and its m children is a chain of binary
decisions: "stop vs continue" (absent at terminal nodes), then, when m >= 2, "children[0] vs
the rest", "children[1] vs the rest", ... (m - 1 decisions). Each is a weighted logistic
regression on features of the node's own softmax (never a later node's), fitted with the
downstream decisions already fitted and fixed (reverse topological order, and the choice chain
of a node before its stop decision): the label is the better option for the sample and the
weight how much better it is. Every sample trains every decision, as in the paper's reduction.
The logistic loss is a surrogate: the classifier's bias is then set where the weighted 0/1
objective of the decision is best along the fitted direction (dyve's choice).

Baselines: fixed thresholds on max probability or entropy (a cascade that never jumps), the
oracle (cheapest correct path per sample) and one node alone (the backbone is the last exit).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

FEATURE_KINDS = ("softmax", "confidence", "both")
THRESHOLD_KINDS = ("max_prob", "entropy")
_FORMAT = "dyve.adaptive.policy/1"


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


def entropy(probs: Tensor) -> Tensor:
    """Shannon entropy (nats) of each row of ``probs``."""
    return -(probs * probs.clamp_min(1e-30).log()).sum(1)


def features(probs: Tensor, kind: str) -> Tensor:
    """Float64 ``[N, F]`` policy inputs from one node's softmax ``probs`` ``[N, C]``.

    ``softmax``: the probabilities; ``confidence``: the top-k sorted probabilities
    (k = min(5, C)), the entropy and the top-1 minus top-2 margin; ``both``: the two joined.
    Float64 so that :func:`features_one` (plain Python floats) computes the same numbers.
    """
    if kind not in FEATURE_KINDS:
        raise ValueError(f"unknown feature kind {kind!r}; choose from {FEATURE_KINDS}")
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probs must be [N, C >= 2], got {tuple(probs.shape)}")
    p = probs.double()
    if kind == "softmax":
        return p
    top = p.topk(min(5, p.shape[1]), 1).values
    conf = torch.cat([top, entropy(p)[:, None], top[:, :1] - top[:, 1:2]], 1)
    return conf if kind == "confidence" else torch.cat([p, conf], 1)


def entropy_one(p: Sequence[float]) -> float:
    """:func:`entropy` of one sample's probabilities, in Python floats."""
    return -sum(v * math.log(max(v, 1e-30)) for v in p)


def features_one(p: Sequence[float], kind: str) -> list[float]:
    """:func:`features` of one sample (``probs[i].tolist()``) in Python floats.

    Batch 1 decides with no tensor op at all: after a network has run, each small op costs
    several times its warm dispatch time (its code is out of the caches), and a decision in
    tensors takes some twenty of them. Equal to ``features(probs, kind)[i]`` up to float64
    rounding (summation order).
    """
    if kind not in FEATURE_KINDS:
        raise ValueError(f"unknown feature kind {kind!r}; choose from {FEATURE_KINDS}")
    if kind == "softmax":
        return list(p)
    top = sorted(p, reverse=True)[: min(5, len(p))]
    conf = [*top, entropy_one(p), top[0] - top[1]]
    return conf if kind == "confidence" else [*p, *conf]


@dataclass(frozen=True)
class Classifier:
    """One binary decision: the first option where ``((phi - mean) / std) . weight + bias > 0``.

    ``phi`` = ``features(probs, kind)``; all tensors float64, ``bias`` a scalar.
    """

    weight: Tensor
    bias: Tensor
    mean: Tensor
    std: Tensor
    kind: str

    @classmethod
    def fit(
        cls, probs: Tensor, first: Tensor, second: Tensor, *, kind: str = "both", l2: float = 1e-3
    ) -> Classifier:
        """Fit the choice between two options with per-sample values ``first``, ``second``.

        Values are lower-is-better. The label is the better option, the weight the absolute
        difference (ties carry no information and are dropped). The loss is the weighted mean
        logistic loss + ``l2 * |weight|^2`` on standardised features, minimised by L-BFGS in
        float64 (deterministic); the bias is then set on the weighted 0/1 objective itself
        (:func:`_best_bias`). With nothing to separate (one class left, or all ties) the
        classifier is a constant for the option that is better on the sum of the values.
        """
        phi = features(probs, kind).double()
        if first.shape != (len(phi),) or second.shape != (len(phi),):
            raise ValueError(
                f"values {tuple(first.shape)}, {tuple(second.shape)} for {len(phi)} rows"
            )
        mean = phi.mean(0)
        std = phi.std(0, correction=0)
        std = torch.where(std > 1e-8, std, torch.ones_like(std))
        gain = (second - first).double()  # > 0 where the first option is better
        keep = gain != 0
        y, w = gain[keep].sign(), gain[keep].abs()
        if not ((y > 0).any() and (y < 0).any()):
            bias = 1.0 if float(gain.sum()) >= 0 else -1.0
            return cls(
                torch.zeros_like(mean), torch.tensor(bias, dtype=torch.float64), mean, std, kind
            )
        x = (phi[keep] - mean) / std
        w = w / w.sum()
        params = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([params], max_iter=200, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            opt.zero_grad()
            z = x @ params[:-1] + params[-1]
            loss = (w * F.softplus(-y * z)).sum() + l2 * params[:-1].square().sum()
            loss.backward()  # type: ignore[no-untyped-call]
            return loss.detach()

        opt.step(closure)  # type: ignore[no-untyped-call]
        weight = params.detach()[:-1].clone()
        bias = _best_bias(((phi - mean) / std) @ weight, gain)
        return cls(weight, torch.tensor(bias, dtype=torch.float64), mean, std, kind)

    def score(self, probs: Tensor) -> Tensor:
        """Float64 ``[N]`` scores; > 0 picks the first option."""
        return self.score_features(features(probs, self.kind).double())

    def score_features(self, phi: Tensor) -> Tensor:
        """:meth:`score` from ``features(probs, self.kind).double()`` computed once per node."""
        dev = phi.device
        z = (phi - self.mean.to(dev)) / self.std.to(dev)
        return z @ self.weight.to(dev) + self.bias.to(dev)

    def predict(self, probs: Tensor) -> Tensor:
        """Bool ``[N]``: True where the first option (stop, or children[i]) is picked."""
        return self.score(probs) > 0

    @cached_property
    def _floats(self) -> tuple[list[float], list[float], list[float], float]:
        return self.weight.tolist(), self.mean.tolist(), self.std.tolist(), float(self.bias)

    def score_one(self, phi: Sequence[float]) -> float:
        """:meth:`score_features` of one sample's :func:`features_one`, in Python floats."""
        weight, mean, std, bias = self._floats
        return (
            sum((f - m) / s * w for f, m, s, w in zip(phi, mean, std, weight, strict=True)) + bias
        )


def _best_bias(z: Tensor, gain: Tensor) -> float:
    """The bias ``b`` maximising ``sum(gain[z + b > 0])``: the weighted 0/1 objective of the
    decision, exactly, along the logistic regression's direction ``z`` (the surrogate loss
    finds the direction; where to cut it is set on the objective itself). Cuts fall
    halfway between distinct scores; among equal gains the fewest first-option picks win."""
    order = torch.argsort(z, descending=True)
    zs = z[order]
    cum = torch.cat([gain.new_zeros(1), torch.cumsum(gain[order], 0)])
    cuttable = torch.ones_like(cum, dtype=torch.bool)
    cuttable[1:-1] = zs[:-1] > zs[1:]
    k = int(torch.argmax(torch.where(cuttable, cum, -math.inf)))
    if k == 0:
        return -float(zs[0]) - 1.0
    if k == len(zs):
        return -float(zs[-1]) + 1.0
    return -0.5 * float(zs[k - 1] + zs[k])


class Policy(Protocol):
    """What :func:`evaluate` needs: the decisions at one node from its softmax."""

    def decide(self, node: str, probs: Tensor) -> tuple[Tensor, Tensor]:
        """Bool ``[N]`` stop, int64 ``[N]`` child index (-1 where stopping)."""
        ...

    def decide_one(self, node: str, probs: Sequence[float]) -> int | None:
        """:meth:`decide` for one sample's probabilities (a list): None to stop, else the
        child index; what batch 1 runs (see :func:`features_one`)."""
        ...


def _decision_keys(n_children: int) -> list[str]:
    """State names of a node's decisions: stop, then the choice chain."""
    return ["stop", *(f"choice{i}" for i in range(n_children - 1))] if n_children else []


@dataclass(frozen=True)
class NodeRule:
    """The fitted decisions of one node (none at a terminal node)."""

    n_children: int
    stop: Classifier | None = None
    #: ``choices[i]`` decides "children[i] vs the rest"; the last child takes what is left
    choices: tuple[Classifier, ...] = ()

    def classifiers(self) -> dict[str, Classifier]:
        found = [] if self.stop is None else [self.stop, *self.choices]
        return dict(zip(_decision_keys(self.n_children), found, strict=True))

    def decide(self, probs: Tensor) -> tuple[Tensor, Tensor]:
        n, dev = probs.shape[0], probs.device
        if self.stop is None:
            return torch.ones(n, dtype=torch.bool, device=dev), torch.full((n,), -1, device=dev)
        phi = features(probs, self.stop.kind).double()  # shared by the node's decisions
        stop = self.stop.score_features(phi) > 0
        child = torch.full((n,), self.n_children - 1, dtype=torch.int64, device=dev)
        for i in reversed(range(len(self.choices))):  # the first choice that says yes wins
            child = torch.where(self.choices[i].score_features(phi) > 0, i, child)
        return stop, child.masked_fill(stop, -1)

    def decide_one(self, probs: Sequence[float]) -> int | None:
        if self.stop is None:
            return None
        phi = features_one(probs, self.stop.kind)
        if self.stop.score_one(phi) > 0:
            return None
        return next(
            (i for i, c in enumerate(self.choices) if c.score_one(phi) > 0), self.n_children - 1
        )


@dataclass(frozen=True)
class LearnedPolicy:
    """The paper's policy: per node its fitted decisions; built by :func:`fit_learned`."""

    rules: dict[str, NodeRule]
    lam: float
    features: str
    topk: int
    policy_cost: float

    def decide(self, node: str, probs: Tensor) -> tuple[Tensor, Tensor]:
        """Bool ``[N]`` stop and int64 ``[N]`` child index (-1 where stopping) at ``node``."""
        if node not in self.rules:
            raise ValueError(f"the policy has no node {node!r}; nodes: {list(self.rules)}")
        return self.rules[node].decide(probs)

    def decide_one(self, node: str, probs: Sequence[float]) -> int | None:
        """None (stop) or the child index for one sample at ``node``."""
        if node not in self.rules:
            raise ValueError(f"the policy has no node {node!r}; nodes: {list(self.rules)}")
        return self.rules[node].decide_one(probs)

    def state(self) -> dict[str, Tensor]:
        """Flat tensors, e.g. ``"A.stop.weight"``, ``"A.choice0.bias"``; see :meth:`meta`."""
        return {
            f"{name}.{key}.{part}": getattr(clf, part).clone()
            for name, rule in self.rules.items()
            for key, clf in rule.classifiers().items()
            for part in ("weight", "bias", "mean", "std")
        }

    def meta(self) -> dict[str, Any]:
        """JSON-able description that, with :meth:`state`, rebuilds the policy."""
        return {
            "format": _FORMAT,
            "lam": self.lam,
            "features": self.features,
            "topk": self.topk,
            "policy_cost": self.policy_cost,
            "nodes": {name: rule.n_children for name, rule in self.rules.items()},
        }

    @classmethod
    def from_state(cls, meta: dict[str, Any], tensors: dict[str, Tensor]) -> LearnedPolicy:
        """Rebuild the policy saved as ``meta()`` and ``state()``."""
        if meta.get("format") != _FORMAT:
            raise ValueError(f"not a policy description (format {meta.get('format')!r})")
        kind = str(meta["features"])
        rules = {}
        for name, m in meta["nodes"].items():
            clfs = []
            for key in _decision_keys(int(m)):
                parts = [f"{name}.{key}.{p}" for p in ("weight", "bias", "mean", "std")]
                missing = [p for p in parts if p not in tensors]
                if missing:
                    raise ValueError(f"policy state lacks {missing}")
                weight, bias, mean, std = (tensors[p].double().clone() for p in parts)
                clfs.append(Classifier(weight, bias, mean, std, kind))
            rules[name] = NodeRule(int(m), clfs[0] if clfs else None, tuple(clfs[1:]))
        return cls(rules, float(meta["lam"]), kind, int(meta["topk"]), float(meta["policy_cost"]))


@dataclass(frozen=True)
class ThresholdPolicy:
    """Baseline cascade: stop where max prob >= threshold (``max_prob``) or entropy <= threshold
    (``entropy``), else go to children[0]. ``math.inf`` / -1 never stop early (float32 softmax
    can reach exactly 1.0). It knows no graph: :func:`evaluate` stops at terminal nodes itself.
    """

    kind: str
    threshold: float

    def __post_init__(self) -> None:
        if self.kind not in THRESHOLD_KINDS:
            raise ValueError(f"unknown threshold kind {self.kind!r}; choose from {THRESHOLD_KINDS}")
        if math.isnan(self.threshold):
            raise ValueError("the threshold is NaN")

    def decide(self, node: str, probs: Tensor) -> tuple[Tensor, Tensor]:
        p = probs.double()
        if self.kind == "max_prob":
            stop = p.max(1).values >= self.threshold
        else:
            stop = entropy(p) <= self.threshold
        return stop, torch.zeros(p.shape[0], dtype=torch.int64, device=p.device).masked_fill(
            stop, -1
        )

    def decide_one(self, node: str, probs: Sequence[float]) -> int | None:
        if self.kind == "max_prob":
            stop = max(probs) >= self.threshold
        else:
            stop = entropy_one(probs) <= self.threshold
        return None if stop else 0


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


def _check(graph: PolicyGraph, outputs: Outputs, topk: int, policy_cost: float) -> None:
    missing = [n for n in graph.names if n not in outputs.logits]
    if missing:
        raise ValueError(f"no outputs for nodes {missing}")
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    if not math.isfinite(policy_cost) or policy_cost < 0:
        raise ValueError(f"policy_cost must be finite and >= 0, got {policy_cost}")


def _result(
    graph: PolicyGraph, outputs: Outputs, stop: Tensor, cost: Tensor, path: Tensor, topk: int
) -> PolicyResult:
    losses = torch.stack([outputs.loss(n, topk) for n in graph.names], 1)
    correct = losses.gather(1, stop[:, None]).squeeze(1) == 0
    return PolicyResult(graph.names, stop, cost, correct, path)


def fit_learned(
    graph: PolicyGraph,
    outputs: Outputs,
    lam: float,
    *,
    features: str = "both",
    topk: int = 1,
    l2: float = 1e-3,
    policy_cost: float = 0.0,
) -> LearnedPolicy:
    """Fit the paper's policy minimising E[loss + lam * (node costs + policy_cost per decision)].

    Nodes are fitted in reverse topological order. With ``to_go[k]`` the loss plus lam times
    the cost still to pay after node k under the decisions fitted so far, moving to child j
    is worth ``lam * cost_j + to_go[j]`` and stopping ``sigma_k``. The choice chain is fitted
    from its last decision to its first, then "stop vs continue" against what the chain
    picks; ``to_go[k]`` is then the value of what the fitted classifiers choose (not the best).
    """
    _check(graph, outputs, topk, policy_cost)
    if not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be finite and >= 0, got {lam}")
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    if features not in FEATURE_KINDS:
        raise ValueError(f"unknown feature kind {features!r}; choose from {FEATURE_KINDS}")
    overhead = lam * policy_cost  # paid by both options of every decision
    to_go: dict[str, Tensor] = {}
    rules: dict[str, NodeRule] = {}
    for name in reversed(graph.topological()):
        node = graph.node(name)
        sigma = outputs.loss(name, topk)
        if not node.children:
            to_go[name], rules[name] = sigma, NodeRule(0)
            continue
        probs = outputs.probs(name)
        values = [lam * graph.node(c).cost + to_go[c] for c in node.children]
        rest = values[-1]
        choices: list[Classifier] = []
        for i in reversed(range(len(values) - 1)):
            clf = Classifier.fit(probs, values[i], rest, kind=features, l2=l2)
            rest = overhead + torch.where(clf.predict(probs), values[i], rest)
            choices.insert(0, clf)
        stop = Classifier.fit(probs, sigma, rest, kind=features, l2=l2)
        to_go[name] = overhead + torch.where(stop.predict(probs), sigma, rest)
        rules[name] = NodeRule(len(values), stop, tuple(choices))
    ordered = {n: rules[n] for n in graph.names}
    return LearnedPolicy(ordered, float(lam), features, topk, float(policy_cost))


def evaluate(
    graph: PolicyGraph, outputs: Outputs, policy: Policy, *, topk: int = 1, policy_cost: float = 0.0
) -> PolicyResult:
    """Run ``policy`` on the cached outputs: paths, costs (plus ``policy_cost`` per decision
    evaluated: 1 for "stop vs continue", then the choice decisions up to the one that picks),
    and top-k correctness at the stopping node. Terminal nodes stop without asking the policy.
    """
    _check(graph, outputs, topk, policy_cost)
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
    _check(graph, outputs, topk, 0.0)
    i = graph.index(name)
    cost, nodes = graph.cheapest_paths()[name]
    n = outputs.n
    stop = torch.full((n,), i, dtype=torch.int64)
    path = _path_mask(graph, nodes).expand(n, -1).clone()
    return _result(graph, outputs, stop, torch.full((n,), cost, dtype=torch.float64), path, topk)


def oracle(graph: PolicyGraph, outputs: Outputs, topk: int = 1) -> PolicyResult:
    """Per sample the cheapest path to a correct node, else the root alone: the least cost of
    the best achievable accuracy (node costs only, no policy overhead)."""
    _check(graph, outputs, topk, 0.0)
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
