"""The four D2NN architectures of the paper, built for CIFAR-10 from the graph language.

Each is a small plain CNN cut into nodes (3x3 conv + BN + ReLU layers, global average
pooling heads), sized so that a CPU trains one in minutes. MACs per sample (static path
with every controller at its most expensive action; controllers about 0.03 M each):

* ``highlow``: a shared trunk, then a controller picks a low-capacity branch (one conv,
  ~0.6 M) or a high-capacity one (three convs, ~8 M); both feed the output (sum).
* ``cascade``: three stages of rising cost, each with a binary head (one class against the
  rest); after stages 1 and 2 a controller reading that stage's head scores stops (a dummy
  node) or continues; the output is the last head that ran. Trained for F1 over mini-bags.
* ``chain``: three stages; before each, a controller picks how much of it runs: 1, 2 or all
  4 filter groups (the others deliver zeros).
* ``hierarchical``: a trunk, then a controller runs the vehicles leaf (airplane,
  automobile, ship, truck), the animals leaf (the other six) or both; classes of a leaf
  that did not run get a score that cannot win.
* ``hierarchical2``: the same trunk and first decision, then one level deeper, as the
  paper's class hierarchies are: each group (one conv) has a controller that runs one or
  both of its sub-group leaves (road vehicles / aircraft and ships; mammals / birds and
  frogs). One level caps the saving below 2x (a path runs half the leaves' work at best);
  two levels let a path skip three of four leaves.
"""

from __future__ import annotations

import torch
from torch import nn

from dyve.mechanisms.d2nn.combine import Concat, Last, Place, Sum
from dyve.mechanisms.d2nn.graph import Edge, GraphSpec
from dyve.mechanisms.d2nn.module import D2Graph

ARCHS = ("highlow", "cascade", "chain", "hierarchical", "hierarchical2")
#: CIFAR-10's natural two-way hierarchy (class indices)
VEHICLES = [0, 1, 8, 9]
ANIMALS = [2, 3, 4, 5, 6, 7]
#: its second level (``hierarchical2``): per group, two sub-groups (name, classes, width)
SUBGROUPS = {
    "vehicles": (("road", [1, 9], 64), ("air_sea", [0, 8], 64)),
    "animals": (("mammals", [3, 4, 5, 7], 96), ("bird_frog", [2, 6], 64)),
}
#: score of a class whose leaf did not run: lower than any score a leaf produces
NOT_RUN = -1e4


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv (no bias), batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


def head(c: int, classes: int) -> nn.Sequential:
    """Global average pooling and a linear classifier."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes))


class Controller(nn.Sequential):
    """A control module: pool the state to 4x4, one hidden layer, one Q-value per action."""

    def __init__(self, channels: int, actions: int, hidden: int = 64) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(channels * 16, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, actions),
        )


class ScoreController(nn.Sequential):
    """A control module on a head's class scores: one hidden layer, one Q-value per action
    (a cascade stops where its current prediction is reliable)."""

    def __init__(self, classes: int, actions: int, hidden: int = 16) -> None:
        super().__init__(
            nn.Linear(classes, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, actions)
        )


def highlow(num_classes: int = 10) -> GraphSpec:
    g = GraphSpec()
    g.regular("trunk", nn.Sequential(conv_bn(3, 16), conv_bn(16, 32, 2)), "input")
    g.control(
        "q",
        Controller(32, 2),
        state="trunk",
        actions={"low": ["low"], "high": ["high"]},
        static="high",
    )
    g.regular("low", nn.Sequential(conv_bn(32, 32, 2), head(32, num_classes)), "trunk")
    high = nn.Sequential(
        conv_bn(32, 64), conv_bn(64, 64, 2), conv_bn(64, 128, 2), head(128, num_classes)
    )
    g.regular("high", high, "trunk")
    g.regular("out", Sum(), [Edge("low", 0.0), Edge("high", 0.0)])
    g.output("out")
    return g


def cascade(num_classes: int = 2) -> GraphSpec:
    g = GraphSpec()
    widths = [(3, 16, 16), (16, 32, 32), (32, 64, 128)]
    prev = "input"
    heads = []
    for k, (cin, mid, cout) in enumerate(widths, 1):
        if k == 3:
            body = nn.Sequential(conv_bn(cin, mid), conv_bn(mid, cout, 2), conv_bn(cout, cout))
        else:
            body = nn.Sequential(conv_bn(cin, mid, 2), conv_bn(mid, cout))
        g.regular(f"s{k}", body, prev)
        g.regular(f"h{k}", head(cout, num_classes), f"s{k}")
        heads.append(f"h{k}")
        if k < 3:
            g.control(
                f"q{k}",
                ScoreController(num_classes, 2),
                state=f"h{k}",
                actions={"stop": [f"stop{k}"], "go": [f"s{k + 1}"]},
                static="go",
            )
            g.dummy(f"stop{k}", f"s{k}")
        prev = f"s{k}"
    g.regular("out", Last(), [heads[0], *(Edge(h, 0.0) for h in heads[1:])])
    g.output("out")
    return g


def chain(num_classes: int = 10) -> GraphSpec:
    g = GraphSpec()
    g.regular("trunk", conv_bn(3, 24, 2), "input")
    prev, cin = "trunk", 24
    for k, (cout, stride) in enumerate([(64, 1), (128, 2), (128, 2)], 1):
        groups = [f"g{k}_{j}" for j in range(4)]
        g.control(
            f"q{k}",
            Controller(cin, 3),
            state=prev,
            actions={"quarter": groups[:1], "half": groups[:2], "full": groups},
            static="full",
        )
        for name in groups:
            g.regular(name, conv_bn(cin, cout // 4, stride), prev)
        g.regular(f"stage{k}", Concat(), [Edge(n, 0.0) for n in groups])
        prev, cin = f"stage{k}", cout
    g.regular("out", head(cin, num_classes), prev)
    g.output("out")
    return g


def _hierarchy_root(num_classes: int) -> GraphSpec:
    """Both hierarchies' trunk and first decision: the vehicles group, animals, or both."""
    if num_classes != 10:
        raise ValueError("the hierarchical D2NN follows CIFAR-10's 10 classes")
    g = GraphSpec()
    g.regular("trunk", nn.Sequential(conv_bn(3, 16), conv_bn(16, 32, 2)), "input")
    g.control(
        "q",
        Controller(32, 3),
        state="trunk",
        actions={"vehicles": ["vehicles"], "animals": ["animals"], "both": ["vehicles", "animals"]},
        static="both",
    )
    return g


def hierarchical(num_classes: int = 10) -> GraphSpec:
    g = _hierarchy_root(num_classes)
    for leaf, classes, width in (("vehicles", VEHICLES, 64), ("animals", ANIMALS, 96)):
        body = nn.Sequential(conv_bn(32, 64, 2), conv_bn(64, width), head(width, len(classes)))
        g.regular(leaf, body, "trunk")
    g.regular(
        "out", Place([VEHICLES, ANIMALS], 10), [Edge("vehicles", NOT_RUN), Edge("animals", NOT_RUN)]
    )
    g.output("out")
    return g


def hierarchical2(num_classes: int = 10) -> GraphSpec:
    """Two levels of CIFAR-10's hierarchy: vehicles / animals, then sub-groups, then classes."""
    g = _hierarchy_root(num_classes)
    leaves: list[tuple[str, list[int]]] = []
    for group, subgroups in SUBGROUPS.items():
        g.regular(group, conv_bn(32, 64, 2), "trunk")
        a, b = (leaf for leaf, _, _ in subgroups)
        g.control(
            f"q_{group}",
            Controller(64, 3),
            state=group,
            actions={a: [a], b: [b], "both": [a, b]},
            static="both",
        )
        for leaf, classes, width in subgroups:
            g.regular(leaf, nn.Sequential(conv_bn(64, width), head(width, len(classes))), group)
            leaves.append((leaf, classes))
    g.regular(
        "out",
        Place([c for _, c in leaves], 10),
        [Edge(leaf, NOT_RUN) for leaf, _ in leaves],
    )
    g.output("out")
    return g


BUILDERS = {
    "highlow": highlow,
    "cascade": cascade,
    "chain": chain,
    "hierarchical": hierarchical,
    "hierarchical2": hierarchical2,
}


def build(arch: str, num_classes: int | None = None, static: str | None = None) -> D2Graph:
    """A D2NN of architecture ``arch`` (random weights) for 32x32 RGB inputs; ``static``
    (``"q=low"``) replaces static actions, making the plain forward that static path."""
    if arch not in BUILDERS:
        raise ValueError(f"unknown D2NN architecture {arch!r}; choose from {ARCHS}")
    spec = BUILDERS[arch](**({} if num_classes is None else {"num_classes": num_classes}))
    graph = D2Graph(spec, torch.zeros(1, 3, 32, 32))
    if static:
        graph.static_actions = graph.parse_choice(static)
    return graph
