"""Early exit (Bolukbasi et al. 2017): exit heads at stage outputs, and per-sample exit policies.

The backbone is left intact. At each chosen exit point an *exit head* (average pool to
``pool x pool``, flatten, linear) predicts the classes; a *policy* decides per sample
whether to leave with that prediction or go on. Policies (knob ``policy``):

* ``off``: no head is evaluated; the network is the backbone (the identity contract).
* ``max_prob``: leave when the head's top softmax probability >= ``threshold``.
* ``entropy``: leave when the softmax entropy <= ``threshold``.
* ``learned``: the paper's policy, a linear classifier on confidence features of the head's
  softmax, fitted by layer-by-layer weighted binary classification
  (:mod:`dyve.mechanisms.adaptive.policy`); the network stores one fitted policy per value
  in ``lams`` and the knob ``lam`` picks one.

The core's exit points do the rest: leavers are dropped from the batch (fast back-end) and
pay only what ran (:mod:`dyve.dynamic.exits`). Heads are trained with the backbone frozen
(:mod:`dyve.mechanisms.adaptive.heads`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dyve.cost import static_cost
from dyve.errors import DyveError
from dyve.mechanisms.adaptive.native_exits import ExitProgram
from dyve.mechanisms.adaptive.policy import Classifier, LearnedPolicy, ThresholdPolicy, features_one
from dyve.mechanisms.adaptive.policy import features as policy_features
from dyve.mechanisms.base import MECHANISMS
from dyve.mechanisms.dyvedeep.runner import NativeRunner

if TYPE_CHECKING:
    from collections.abc import Iterator

    from dyve.dynamic.net import DynamicNet

POLICIES = ("off", "max_prob", "entropy", "learned")


@dataclass(frozen=True)
class EarlyExitConfig:
    """Settings of :class:`EarlyExit` (knobs: ``policy``, ``threshold``, ``lam``)."""

    #: exit points that get a head (default: every stage output but the last)
    exits: tuple[str, ...] | None = None
    #: instead of stages: a head after every ``every``-th residual block (0 = stages)
    every: int = 0
    #: heads average-pool to ``pool x pool`` before their linear layer
    pool: int = 1
    #: conv layers of each head before its pooling (:class:`ExitHead`; 0 = linear heads);
    #: -1: at each exit as many as halve its map to at most 8 x 8 (at least one)
    convs: int = 0
    #: policy features: "softmax", "confidence" (sorted top-5, entropy, margin) or "both"
    features: str = "both"
    #: lambda of each stored learned policy (set by fitting)
    lams: tuple[float, ...] = ()
    #: knob: which policy decides (see the module docstring; "off" = the backbone)
    policy: str = "off"
    #: knob: the threshold of ``max_prob`` / ``entropy`` (inf / -1: nobody leaves)
    threshold: float = math.inf
    #: knob: which stored learned policy (one of ``lams``)
    lam: float = 0.0


class ExitHead(nn.Module):
    """An exit's classifier: ``convs`` stride-2 conv + batch norm + ReLU layers (each
    doubling the channels), average pool to ``pool x pool`` (4-d inputs), flatten, linear.

    ``convs = 0`` is the linear head. The pooling is a fixed-window ``AvgPool2d`` where the
    map's size is a multiple of ``pool`` (then the head lowers into the native program,
    :class:`~dyve.mechanisms.adaptive.native_exits.ExitProgram`), else adaptive.
    """

    def __init__(
        self, in_shape: tuple[int, ...], num_classes: int, pool: int, convs: int = 0
    ) -> None:
        super().__init__()
        if convs < 0:
            raise DyveError(f"early_exit: convs must be >= 0, got {convs}")
        if convs and len(in_shape) != 3:
            raise DyveError(f"early_exit: conv heads need feature maps, got shape {in_shape}")
        layers: list[nn.Module] = []
        shape = tuple(in_shape)
        for _ in range(convs):
            c, h, w = shape
            layers += [nn.Conv2d(c, 2 * c, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * c), nn.ReLU()]
            shape = (2 * c, (h + 1) // 2, (w + 1) // 2)
        self.body = nn.Sequential(*layers)
        self.in_shape = tuple(in_shape)
        self.pool = pool if len(shape) == 3 else 0
        if not self.pool:
            self.reduce: nn.Module = nn.Identity()
        elif shape[1] % pool == 0 and shape[2] % pool == 0:
            self.reduce = nn.AvgPool2d((shape[1] // pool, shape[2] // pool))
        else:
            self.reduce = nn.AdaptiveAvgPool2d(pool)
        width = shape[0] * pool * pool if self.pool else math.prod(shape)
        self.fc = nn.Linear(width, num_classes)
        # counted once by the cost core (asked for on every traced call of the exit)
        self._macs = int(static_cost(self, self.in_shape).total_macs)

    @property
    def convs(self) -> int:
        return len(self.body) // 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(self.reduce(self.body(x)).flatten(1))
        return out

    def cached(self, x: torch.Tensor) -> torch.Tensor:
        """What a feature cache keeps of the exit point's output ``x``: the pooled, flattened
        features a linear head reads, or the maps themselves for a conv head (whose layers
        are trained on them)."""
        return x if self.convs else self.reduce(x).flatten(1)

    def from_cache(self, feat: torch.Tensor) -> torch.Tensor:
        """The head's logits from what :meth:`cached` kept."""
        out: torch.Tensor = self(feat) if self.convs else self.fc(feat)
        return out

    @property
    def macs(self) -> int:
        """MACs per sample: convolutions and the linear layer, as :func:`static_cost`
        counts them (pooling, batch norm and ReLU are not MACs)."""
        return self._macs


class ExitModule(nn.Module):
    """One exit: the head plus every policy's state; ``evaluate`` for the core's exit point."""

    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, head: ExitHead, feature_kind: str, lams: int) -> None:
        super().__init__()
        self.head = head
        self.feature_kind = feature_kind
        dim = policy_features(torch.full((1, head.fc.out_features), 0.1), feature_kind).shape[1]
        # learned policies: score = ((phi - mean) / std) . weight + bias; leave when > 0
        self.register_buffer("weight", torch.zeros(lams, dim, dtype=torch.float64))
        self.register_buffer("bias", torch.zeros(lams, dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(lams, dim, dtype=torch.float64))
        self.register_buffer("std", torch.ones(lams, dim, dtype=torch.float64))
        self.policy = "off"
        self.threshold = math.inf
        self.index = 0  # which learned policy
        self.forced: bool | None = None  # see EarlyExit.force
        self._classifier: tuple[tuple[int, ...], Classifier] | None = None  # see classifier

    def decide(self, probs: torch.Tensor) -> torch.Tensor:
        """Bool ``[N]``: leave here, from the head's softmax ``probs``."""
        if self.policy in ("max_prob", "entropy"):  # the very rule the cached study evaluates
            leave = ThresholdPolicy(self.policy, self.threshold).decide("", probs)[0]
        else:
            leave = self.classifier(self.index).predict(probs)
        return leave if self.forced is None else torch.full_like(leave, self.forced)

    def decide_one(self, probs: list[float]) -> bool:
        """:meth:`decide` for one sample's probabilities, on Python floats (batch 1)."""
        if self.policy in ("max_prob", "entropy"):
            leave = ThresholdPolicy(self.policy, self.threshold).decide_one("", probs) is None
        else:
            clf = self.classifier(self.index)
            leave = clf.score_one(features_one(probs, self.feature_kind)) > 0
        return leave if self.forced is None else self.forced

    def classifier(self, index: int) -> Classifier:
        """The stored learned policy ``index`` as the classifier it was fitted as."""
        # kept while the buffers stay the same tensors, unchanged in place (a load copies
        # into them, store() replaces them): batch 1 reuses its Python floats (score_one)
        parts = (self.weight, self.bias, self.mean, self.std)
        key = (index, *(t.data_ptr() for t in parts), *(t._version for t in parts))
        if self._classifier is None or self._classifier[0] != key:
            i = index
            clf = Classifier(
                self.weight[i], self.bias[i], self.mean[i], self.std[i], self.feature_kind
            )
            self._classifier = (key, clf)
        return self._classifier[1]

    def store(self, classifiers: list[Classifier]) -> None:
        """Keep one fitted classifier per lambda (replaces what was stored)."""
        for part in ("weight", "bias", "mean", "std"):
            stacked = [getattr(c, part).double() for c in classifiers]
            setattr(self, part, torch.stack(stacked) if stacked else getattr(self, part)[:0])

    def evaluate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.policy == "off" and self.forced is None:
            return x, None
        logits = self.head(x)
        if logits.shape[0] == 1:  # no small tensor ops between the network's layers
            probs = torch.softmax(logits.float(), 1)[0].tolist()
            return logits, torch.tensor([self.decide_one(probs)])
        return logits, self.decide(torch.softmax(logits.float(), 1))

    def overhead_macs(self) -> float:
        extra = self.weight.shape[1] if self.policy == "learned" else 0
        return float(self.head.macs + extra)


class EarlyExit(NativeRunner):
    """Exit heads and exit policies (see the module docstring).

    On the fast back-end the network runs as one native program with its heads and
    policies (:class:`~dyve.mechanisms.adaptive.native_exits.ExitProgram`, kept while
    valid) when an exit evaluates; with none evaluating, per module (the backbone, bit for
    bit). ``native_program = False`` keeps the per-module path.
    """

    name = "early_exit"
    config_class = EarlyExitConfig
    knob_names = ("policy", "threshold", "lam")
    runs_exits = True

    def lower(self, net: DynamicNet, x: torch.Tensor) -> ExitProgram | None:
        """The network with its exits as one program; None without an evaluating exit, or
        for a network with gated units or sites (which run per module)."""
        points = net._active_exits()
        if net.units or net.sites or not points:
            return None
        if all(m.policy == "off" and m.forced is None for m in self.modules.values()):
            return None
        return ExitProgram(net, points, x)

    def fast_runner(self, net: DynamicNet, x: torch.Tensor) -> ExitProgram | None:
        """As :meth:`NativeRunner.fast_runner`, but None with autograd enabled (the program
        has no backward: the per-module path keeps the gradients)."""
        if torch.is_grad_enabled():
            return None
        prog = super().fast_runner(net, x)
        assert prog is None or isinstance(prog, ExitProgram)
        return prog

    def attach(self, net: DynamicNet) -> None:
        cfg = self.config
        if cfg.policy not in POLICIES:
            raise DyveError(f"early_exit: policy must be one of {POLICIES}, got {cfg.policy!r}")
        if cfg.convs < -1:
            raise DyveError(f"early_exit: convs must be >= 0, or -1 (automatic), got {cfg.convs}")
        self.points = exit_points(net, cfg)
        classes = net.graph.sites[-1].out_shape[0] if net.graph.sites else 0
        shapes = _output_shapes(net)
        self.modules: dict[str, ExitModule] = {}
        for p in self.points:
            head = ExitHead(shapes[p], classes, cfg.pool, head_convs(shapes[p], cfg.convs))
            mod = ExitModule(head, cfg.features, len(cfg.lams))
            net.exit_point(p).add_exit(self.name, mod)
            self.modules[p] = mod
        for knob in self.knob_names:
            self.set_knob(knob, getattr(cfg, knob))

    def set_knob(self, knob: str, value: Any) -> None:
        self._check_knob(knob)
        cfg = self.config
        if knob == "policy":
            if value not in POLICIES:
                raise DyveError(f"early_exit: policy must be one of {POLICIES}, got {value!r}")
            if value == "learned" and not cfg.lams:
                raise DyveError("early_exit: no learned policy stored; fit one first")
            for m in self.modules.values():
                m.policy = value
        elif knob == "threshold":
            value = float(value)
            for m in self.modules.values():
                m.threshold = value
        else:
            value = float(value)
            if cfg.lams and value not in cfg.lams:
                raise DyveError(f"early_exit: lam {value} was not fitted; fitted: {cfg.lams}")
            for m in self.modules.values():
                m.index = cfg.lams.index(value) if cfg.lams else 0
        self.config = replace(cfg, **{knob: value})

    def parameters(self, net: DynamicNet) -> Iterator[nn.Parameter]:
        for m in self.modules.values():
            yield from m.head.parameters()

    def store_policies(self, policies: list[LearnedPolicy]) -> None:
        """Keep fitted learned policies (one per lambda) in the network; ``lam`` picks one.

        Each policy's rule at an exit point's node (named like the point) becomes that
        exit's classifier; the knob values are kept when still valid.
        """
        for p, mod in self.modules.items():
            found = [pol.rules[p].stop for pol in policies]
            if any(c is None for c in found):
                raise DyveError(f"early_exit: a policy has no exit decision at {p}")
            mod.store([c for c in found if c is not None])
        lams = tuple(float(pol.lam) for pol in policies)
        self.config = replace(self.config, lams=lams)
        if self.config.lam not in lams:
            self.set_knob("lam", lams[0] if lams else 0.0)
        if not lams and self.config.policy == "learned":
            self.set_knob("policy", "off")

    def force(self, leave_at: str | None) -> None:
        """Every sample leaves at exit ``leave_at`` (None: at none; ``unforce`` undoes it).

        Each exit reached still evaluates its head and its policy (the stored learned one
        when the policy knob is "off"), whose answer is then overridden: a timed forced
        run pays what the real policy costs on its path (how
        :mod:`~dyve.mechanisms.adaptive.latency` measures stage latencies).
        """
        if leave_at is not None and leave_at not in self.modules:
            raise DyveError(f"early_exit: no exit {leave_at!r}; exits: {list(self.modules)}")
        for p, m in self.modules.items():
            m.forced = p == leave_at

    def unforce(self) -> None:
        """Back to the policies' own decisions."""
        for m in self.modules.values():
            m.forced = None

    def heads(self) -> dict[str, ExitHead]:
        """The exit heads by exit point, in the order samples reach them."""
        return {p: m.head for p, m in self.modules.items()}


def exit_points(net: DynamicNet, cfg: EarlyExitConfig) -> list[str]:
    """Where heads go: ``cfg.exits``, every ``cfg.every``-th block, or each stage but the last."""
    g = net.graph
    if cfg.exits is not None:
        unknown = [p for p in cfg.exits if p not in g.exit_points]
        if unknown:
            raise DyveError(f"early_exit: not exit points: {unknown}; choose from {g.exit_points}")
        return sorted(set(cfg.exits), key=g.exit_points.index)
    if cfg.every < 0:
        raise DyveError(f"early_exit: every must be >= 0, got {cfg.every}")
    if cfg.every:
        blocks = [b.name for b in g.blocks]
        return blocks[cfg.every - 1 : -1 : cfg.every]
    stages = [s.name for s in g.stages]
    if len(stages) < 2:
        raise DyveError("early_exit: the backbone has fewer than two stages; name exits=")
    return stages[:-1]


def head_convs(shape: tuple[int, ...], convs: int) -> int:
    """The conv layers of a head on maps of ``shape`` (see :attr:`EarlyExitConfig.convs`)."""
    if convs >= 0 or len(shape) != 3:
        return max(convs, 0)
    n, side = 1, max(shape[1:])
    while (side + 1) // 2 > 8:
        side, n = (side + 1) // 2, n + 1
    return n


def _output_shapes(net: DynamicNet) -> dict[str, tuple[int, ...]]:
    """Output shape (without batch) of every block and stage."""
    g = net.graph
    shapes = {b.name: b.out_shape for b in g.blocks}
    shapes.update({s.name: s.out_shape for s in g.stages})
    return shapes


def register() -> None:
    """Register the early-exit mechanism."""
    MECHANISMS.add(EarlyExit.name, EarlyExit)
