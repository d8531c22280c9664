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

The graph and its cached outputs are :mod:`.graph`'s; running a policy on them, the
baselines and the sweeps are :mod:`.evaluate`'s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from dyve.eval.latency import num_threads
from dyve.mechanisms.adaptive.graph import Outputs, PolicyGraph, check_inputs

FEATURE_KINDS = ("softmax", "confidence", "both")
THRESHOLD_KINDS = ("max_prob", "entropy")
_FORMAT = "dyve.adaptive.policy/1"


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
    @num_threads(1)
    def fit(
        cls, probs: Tensor, first: Tensor, second: Tensor, *, kind: str = "both", l2: float = 1e-3
    ) -> Classifier:
        """Fit the choice between two options with per-sample values ``first``, ``second``.

        Values are lower-is-better. The label is the better option, the weight the absolute
        difference (ties carry no information and are dropped). The loss is the weighted mean
        logistic loss + ``l2 * |weight|^2`` on standardised features, minimised by L-BFGS in
        float64 on one thread (deterministic whatever the caller's thread count); the bias is
        then set on the weighted 0/1 objective itself (:func:`_best_bias`). With nothing to
        separate (one class left, or all ties) the classifier is a constant for the option
        that is better on the sum of the values.
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
    """What :func:`~.evaluate.evaluate` needs: the decisions at one node from its softmax."""

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
    can reach exactly 1.0). It knows no graph: :func:`~.evaluate.evaluate` stops at terminal
    nodes itself.
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
    check_inputs(graph, outputs, topk, policy_cost)
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
