"""D2NN's graph language: validation errors, execution semantics, back-ends, costs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dyve
from dyve.mechanisms import D2NN
from dyve.mechanisms.d2nn import D2Graph, Edge, GraphError, GraphSpec, Last, Place, Sum
from dyve.mechanisms.d2nn.archs import ARCHS, NOT_RUN, build


class Pick(nn.Module):
    """A controller whose Q-values are the first ``k`` input features (decisions by hand)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, : self.k]


class Counting(nn.Linear):
    """A linear layer that records the batch sizes it was called with."""

    def __init__(self, n: int, scale: float) -> None:
        super().__init__(n, n, bias=False)
        nn.init.eye_(self.weight)
        self.weight.data *= scale
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.shape[0])
        return super().forward(x)


def two_way(default: float = 0.0) -> GraphSpec:
    """q picks branch a (x2) where x0 > x1, else branch b (x3); the output sums both."""
    g = GraphSpec()
    g.control("q", Pick(2), state="input", actions={"a": ["a"], "b": ["b"]}, static="b")
    g.regular("a", Counting(4, 2.0), "input")
    g.regular("b", Counting(4, 3.0), "input")
    g.regular("out", Sum(), [Edge("a", default), Edge("b", 0.0)])
    g.output("out")
    return g


def greedy(name: str, q: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return q.argmax(1)


X = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [2, 1, 0, 0], [0, 5, 1, 1]])


@pytest.mark.parametrize("backend", ["fast", "emulated"])
def test_each_sample_runs_the_branch_its_controller_picked(backend: str) -> None:
    g = D2Graph(two_way(), X[:1])
    exe = g.execute(X, greedy, backend=backend)
    pick_a = torch.tensor([True, False, True, False])
    expected = torch.where(pick_a.view(-1, 1), 2 * X, 3 * X)
    assert torch.equal(exe.out, expected)
    assert torch.equal(exe.ran["a"], pick_a)
    assert torch.equal(exe.ran["b"], ~pick_a)
    assert exe.action["q"].tolist() == [0, 1, 0, 1]
    # MACs: the controller is free (slicing), each branch 16
    assert exe.macs.tolist() == [16.0] * 4
    seen = g.nodes["a"].seen  # type: ignore[index]
    assert seen[-1] == (2 if backend == "fast" else 4)  # fast: only the routed rows ran


def test_static_forward_takes_the_static_actions_without_the_controller() -> None:
    g = D2Graph(two_way(), X[:1])
    assert torch.equal(g(X), 3 * X)
    exe = g.execute(X)
    assert not exe.ran["q"].any()
    assert exe.action["q"].tolist() == [1] * 4
    g.static_actions = {"q": 0}
    assert torch.equal(g(X), 2 * X)


def test_default_value_reaches_rows_whose_source_did_not_run() -> None:
    g = D2Graph(two_way(default=7.0), X[:1])
    out = g.execute(X, greedy).out
    assert torch.equal(out[1], 3 * X[1] + 7.0)  # a did not run for sample 1
    assert torch.equal(out[0], 2 * X[0])  # it did for sample 0


def test_nested_controllers_and_actions_sharing_nodes() -> None:
    """c2 runs only where c1 chose "go"; node m is enabled by two of c2's actions (OR)."""
    g = GraphSpec()
    g.control("c1", Pick(2), state="input", actions={"stop": ["halt"], "go": ["c2"]}, static="go")
    g.dummy("halt", "input")
    g.control(
        "c2",
        Pick(3),
        state="input",
        actions={"m": ["m"], "n": ["n"], "both": ["m", "n"]},
        static="both",
    )
    g.regular("m", nn.Linear(4, 4), "input")
    g.regular("n", nn.Linear(4, 4), "input")
    g.regular("out", Sum(), [Edge("m", 0.0), Edge("n", 0.0)])
    g.output("out")
    graph = D2Graph(g, X[:1])
    x = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 1, 3, 0], [0, 2, 0, 0]])
    exe = graph.execute(x, greedy)
    assert exe.ran["c2"].tolist() == [False, True, True, True]
    assert exe.action["c2"].tolist() == [-1, 1, 2, 1]
    assert exe.ran["m"].tolist() == [False, False, True, False]
    assert exe.ran["n"].tolist() == [False, True, True, True]
    assert graph.plan.owner == {"c1": None, "halt": "c1", "c2": "c1", "m": "c2", "n": "c2",
                                "out": None}  # fmt: skip
    # the static paths agree with execution under the same fixed actions
    for choice in graph.static_choices():
        graph.static_actions = choice
        ran = {k for k, v in graph.execute(x).ran.items() if v.all() and k not in ("c1", "c2")}
        assert ran == graph.path(choice) - {"c1", "c2"}
        assert graph.path_macs(choice) == sum(graph.node_macs[n] for n in ran)


def test_trace_charges_every_node_and_matches_execution() -> None:
    torch.manual_seed(0)
    graph = dyve.models.create("d2nn_hierarchical_cifar")
    net = dyve.equip(graph, D2NN(bias=0.0))
    x = torch.randn(6, 3, 32, 32)
    res = net.run(x)
    exe = net.backbone.execute(x, net.backbone.policy)
    assert torch.equal(res.macs, exe.macs)
    for node, status in res.trace.units.items():
        assert torch.equal(status == 0, exe.ran[node]), node
    assert res.trace.cost.cost_mode == "executed"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda g: g.regular("a", nn.Identity(), "input"), "used twice"),
        (lambda g: g.regular("z", nn.Identity(), "nowhere"), "'nowhere' is not a node"),
        (
            lambda g: g.control("c", Pick(1), state="input", actions={"x": ["a"]}, static="x"),
            "at least two actions",
        ),
        (
            lambda g: g.control(
                "c", Pick(2), state="input", actions={"x": ["a"], "y": ["b"]}, static="z"
            ),
            "static action",
        ),
        (
            lambda g: g.control(
                "c", Pick(2), state="input", actions={"x": ["out"], "y": ["b"]}, static="x"
            ),
            "gates the output",
        ),
        (
            lambda g: g.control(
                "c", Pick(2), state="a", actions={"x": ["q"], "y": ["b"]}, static="x"
            ),
            "cycle",
        ),
    ],
)
def test_invalid_graphs_are_clear_errors(edit, message: str) -> None:  # type: ignore[no-untyped-def]
    g = two_way()

    def build_edited() -> None:
        edit(g)
        D2Graph(g, X[:1])

    with pytest.raises(GraphError, match=message):
        build_edited()


def test_output_that_may_not_run_and_merges_of_varying_nodes_are_refused() -> None:
    g = two_way()
    g.nodes.pop("out")
    g.regular("out", Sum(), ["a", "b"])  # required inputs that are gated
    with pytest.raises(GraphError, match="runs for some samples only"):
        D2Graph(g, X[:1])
    g = two_way()
    g.output("a")
    with pytest.raises(GraphError, match=r"gates the output|may not run"):
        D2Graph(g, X[:1])


def test_shape_and_q_errors_name_the_node() -> None:
    g = two_way()
    g.regular("bad", nn.Linear(3, 3), "a")
    with pytest.raises(GraphError, match="node 'bad' fails on inputs of shapes \\[\\[4\\]\\]"):
        D2Graph(g, X[:1])
    g = two_way()
    g.nodes.pop("q")
    g.control("q", Pick(3), state="input", actions={"a": ["a"], "b": ["b"]}, static="b")
    with pytest.raises(GraphError, match="one Q-value per action \\(2\\)"):
        D2Graph(g, X[:1])


def test_last_and_place_combines() -> None:
    a, b = torch.ones(3, 2), 2 * torch.ones(3, 2)
    ran = [torch.ones(3, dtype=torch.bool), torch.tensor([True, False, True])]
    assert Last()([a, b], ran)[:, 0].tolist() == [2.0, 1.0, 2.0]
    place = Place([[2, 0], [1]], 3)
    out = place([torch.tensor([[20.0, 0.0]]), torch.tensor([[10.0]])], ran)
    assert out.tolist() == [[0.0, 10.0, 20.0]]
    with pytest.raises(GraphError, match="cover"):
        Place([[0], [0]], 2)


@pytest.mark.parametrize("arch", ARCHS)
def test_architectures_costs_and_static_paths(arch: str) -> None:
    g = build(arch)
    costs = [g.path_macs(c) for c in g.static_choices()]
    assert max(costs) == g.path_macs(g.static_choice())  # the static path is the full one
    assert min(costs) < 0.7 * max(costs)  # decisions matter
    assert g.max_path_macs > max(costs)  # plus the controllers
    for c, cost in g.action_costs().items():
        assert (cost >= 0).all(), c
        assert cost.max() <= 1, c


def test_run_all_executes_every_branch_and_returns_the_heads() -> None:
    g = D2Graph(two_way(), X[:1])
    out, heads = g.run_all(X)
    assert torch.equal(out, 5 * X)  # both branches, summed
    assert [h.tolist() for h in heads] == [(2 * X).tolist(), (3 * X).tolist()]
    assert g.all_macs == 32.0
    cascade = build("cascade")
    out, heads = cascade.run_all(torch.randn(2, 3, 32, 32))
    assert len(heads) == 3  # one per stage head
    assert torch.equal(out, heads[-1])  # every stage ran: the last head answers
    hier = build("hierarchical")
    out, heads = hier.run_all(torch.randn(2, 3, 32, 32))
    assert len(heads) == 1  # leaves are not 10-way: the output itself
    assert out.shape == (2, 10)


def test_two_level_hierarchy_runs_one_leaf_of_four() -> None:
    g = build("hierarchical2", static="q=vehicles,q_vehicles=road")
    out = g(torch.randn(2, 3, 32, 32))
    real = (out > NOT_RUN / 2).any(0).nonzero().squeeze(1).tolist()
    assert real == [1, 9]  # automobile and truck: the road leaf only
    assert g.path(g.static_choice()) >= {"trunk", "vehicles", "road"}
    assert not g.path(g.static_choice()) & {"animals", "mammals", "air_sea", "bird_frog"}
    full = max(g.path_macs(c) for c in g.static_choices())
    assert full > 2.5 * g.path_macs(g.static_choice())  # two levels: one leaf of four
