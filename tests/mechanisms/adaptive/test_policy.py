"""Policy learning on cached outputs: graphs, costs, the learned policy and its baselines."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import Tensor

from dyve.mechanisms.adaptive.evaluate import (
    PolicyResult,
    evaluate,
    evaluate_node,
    oracle,
    sweep_learned,
    sweep_threshold,
    threshold_grid,
)
from dyve.mechanisms.adaptive.graph import Node, Outputs, PolicyGraph
from dyve.mechanisms.adaptive.policy import (
    FEATURE_KINDS,
    Classifier,
    LearnedPolicy,
    NodeRule,
    ThresholdPolicy,
    _best_bias,
    features,
    features_one,
    fit_learned,
)

SKILLS = {"A": 0.3, "G": 0.6, "R": 0.95}  # accuracy rises with depth: ~24%, ~52%, ~83%


def synthetic(names: tuple[str, ...], seed: int, n: int = 2000, c: int = 10) -> Outputs:
    """Each node's label logit gets a margin that falls with a per-sample difficulty shared by
    all nodes, so a node's confidence tells how likely it and the later nodes are right."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (n,), generator=g)
    difficulty = torch.rand(n, generator=g)
    logits = {}
    for name, skill in zip(names, SKILLS.values(), strict=True):
        x = torch.randn(n, c, generator=g)
        x[torch.arange(n), labels] += 5.0 * (skill - difficulty) + 1.0
        logits[name] = x
    return Outputs(logits, labels)


CHAIN = PolicyGraph.chain(["A", "B", "C"], [1.0, 2.0, 4.0])
# network selection: A may stop, go to G or jump to R; G may stop or go on to R
SELECT = PolicyGraph((Node("A", 1.0, ("G", "R")), Node("G", 2.0, ("R",)), Node("R", 8.0)))


@pytest.fixture(scope="module")
def chain_data() -> tuple[Outputs, Outputs]:
    return synthetic(("A", "B", "C"), seed=0), synthetic(("A", "B", "C"), seed=1)


@pytest.fixture(scope="module")
def select_data() -> tuple[Outputs, Outputs]:
    return synthetic(("A", "G", "R"), seed=0), synthetic(("A", "G", "R"), seed=1)


def by_hand(rows: list[tuple[int, list[list[float]]]], names: tuple[str, ...]) -> Outputs:
    """Outputs from (label, [logits of each node]) rows."""
    logits = {
        n: torch.tensor([r[1][i] for r in rows], dtype=torch.float32) for i, n in enumerate(names)
    }
    return Outputs(logits, torch.tensor([r[0] for r in rows]))


class ArgmaxRoute:
    """Test policy: stop where a node's argmax is 0, else go to child (argmax - 1)."""

    def decide(self, node: str, probs: Tensor) -> tuple[Tensor, Tensor]:
        top = probs.argmax(1)
        return top == 0, torch.where(top == 0, -1, top - 1)


def test_graph_validation() -> None:
    with pytest.raises(ValueError, match="cycle"):
        PolicyGraph((Node("A", 1, ("B",)), Node("B", 1, ("C",)), Node("C", 1, ("A",))))
    with pytest.raises(ValueError, match="unknown children"):
        PolicyGraph((Node("A", 1, ("B",)), Node("B", 1, ("X",))))
    with pytest.raises(ValueError, match="not reachable"):
        PolicyGraph((Node("A", 1, ("B",)), Node("B", 1), Node("C", 1, ("B",))))
    with pytest.raises(ValueError, match="unique"):
        PolicyGraph((Node("A", 1, ("B",)), Node("B", 1), Node("B", 2)))
    with pytest.raises(ValueError, match="cost"):
        Node("A", -1.0)
    with pytest.raises(ValueError, match="costs"):
        PolicyGraph.chain(["A", "B"], [1.0])
    with pytest.raises(ValueError, match="unknown node"):
        CHAIN.node("Z")
    assert CHAIN.node("B").children == ("C",)
    assert CHAIN.node("C").children == ()
    assert SELECT.topological() == ("A", "G", "R")
    # the cheapest way to R jumps over G
    assert SELECT.cheapest_paths()["R"] == (9.0, ("A", "R"))
    # a diamond whose expensive branch is reached first: Z is still reached the cheap way
    diamond = PolicyGraph(
        (Node("A", 1, ("X", "Y")), Node("X", 1, ("Z",)), Node("Y", 5, ("Z",)), Node("Z", 2))
    )
    order = diamond.topological()
    assert order[0] == "A"
    assert order[-1] == "Z"
    assert diamond.cheapest_paths()["Z"] == (4.0, ("A", "X", "Z"))


def test_outputs_features_and_argument_errors(chain_data: tuple[Outputs, Outputs]) -> None:
    with pytest.raises(ValueError, match="expected"):
        Outputs({"A": torch.zeros(3, 4), "B": torch.zeros(2, 4)}, torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="int64"):
        Outputs({"A": torch.zeros(3, 4)}, torch.zeros(3))
    out = by_hand([(0, [[2.0, 1.0, 0.0]]), (2, [[2.0, 1.0, 0.0]])], ("A",))
    with pytest.raises(ValueError, match="no logits"):
        out.probs("B")
    assert out.loss("A").tolist() == [0.0, 1.0]
    assert out.loss("A", topk=2).tolist() == [0.0, 1.0]
    assert out.loss("A", topk=3).tolist() == [0.0, 0.0]

    p = torch.tensor([[0.1, 0.6, 0.3]])
    assert features(p, "softmax").shape == (1, 3)
    conf = features(p, "confidence")  # top-3 sorted, entropy, margin
    ent = -(p * p.log()).sum()
    torch.testing.assert_close(conf[0], torch.tensor([0.6, 0.3, 0.1, float(ent), 0.3]).double())
    assert features(torch.full((2, 10), 0.1), "both").shape == (2, 10 + 5 + 2)
    assert features(p, "both").dtype == torch.float64
    for kind in FEATURE_KINDS:  # one sample in Python floats: the same numbers
        one = features_one(p[0].tolist(), kind)
        torch.testing.assert_close(torch.tensor(one, dtype=torch.float64), features(p, kind)[0])
    with pytest.raises(ValueError, match="feature kind"):
        features(p, "logits")

    fit, _ = chain_data
    with pytest.raises(ValueError, match="lam"):
        fit_learned(CHAIN, fit, -0.1)
    with pytest.raises(ValueError, match="feature kind"):
        fit_learned(CHAIN, fit, 0.1, features="raw")
    with pytest.raises(ValueError, match="no outputs"):
        fit_learned(SELECT, fit, 0.1)
    with pytest.raises(ValueError, match="threshold kind"):
        ThresholdPolicy("margin", 0.5)


# chain A(1) -> B(2) -> C(4), 3 classes; max_prob threshold 0.9, policy_cost 0.5
HAND_CHAIN: list[tuple[int, list[list[float]]]] = [
    (0, [[5, 0, 0], [0, 1, 0], [1, 0, 0]]),  # A sure (p .99) and right: stop at A
    (2, [[1, 0, 0], [0, 6, 0], [0, 0, 2]]),  # A unsure (p .58), B sure and wrong; only C right
    (1, [[0.2, 0, 0.1], [0, 0.1, 0.2], [0, 3, 0]]),  # unsure at A and B; only C right
    (0, [[0, 1, 0], [1, 0, 0], [0, 0, 1]]),  # unsure at A and B (p .58); only B right
]


def test_evaluate_cost_accounting_by_hand() -> None:
    out = by_hand(HAND_CHAIN, ("A", "B", "C"))
    r = evaluate(CHAIN, out, ThresholdPolicy("max_prob", 0.9), policy_cost=0.5)
    # one decision at A and at B each (C is terminal: no decision)
    # s0: 1 + 0.5 = 1.5; s1: 1 + 2 + 2 * 0.5 = 4; s2, s3: 1 + 2 + 4 + 2 * 0.5 = 8
    assert r.cost.tolist() == [1.5, 4.0, 8.0, 8.0]
    assert r.mean_cost == 5.375
    assert r.stop_node.tolist() == [0, 1, 2, 2]
    assert r.correct.tolist() == [True, False, True, False]
    assert r.accuracy == 50.0
    assert r.path.tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 1, 1]]
    assert r.stop_fraction == {"A": 0.25, "B": 0.25, "C": 0.5}
    assert json.loads(json.dumps(r.as_dict()))["accuracy"] == 50.0
    # the oracle stops at the first right node: A (1), C (1 + 2 + 4), C, B (1 + 2)
    o = oracle(CHAIN, out)
    assert o.cost.tolist() == [1.0, 7.0, 7.0, 3.0]
    assert o.stop_node.tolist() == [0, 2, 2, 1]
    assert o.accuracy == 100.0
    # a single exit: everyone pays the path to it
    b = evaluate_node(CHAIN, out, "B")
    assert b.cost.tolist() == [3.0] * 4
    assert b.correct.tolist() == [False, False, False, True]


def test_selection_costs_and_oracle_by_hand() -> None:
    graph = PolicyGraph((Node("A", 1.0, ("G", "R")), Node("G", 2.0, ("R",)), Node("R", 4.0)))
    out = by_hand(
        [
            (0, [[0, 0, 3], [0, 3, 0], [3, 0, 0]]),  # A -> R (jump); only R right
            (0, [[0, 3, 0], [3, 0, 0], [3, 0, 0]]),  # A -> G, stop; G and R right
            (2, [[0, 3, 0], [0, 3, 0], [0, 3, 0]]),  # A -> G -> R; nobody right
            (0, [[3, 0, 0], [0, 0, 0], [0, 0, 0]]),  # stop at A, right
        ],
        ("A", "G", "R"),
    )
    r = evaluate(graph, out, ArgmaxRoute(), policy_cost=0.25)
    # decisions: 2 at A when moving (stop, then "G vs R"), 1 at A when stopping, 1 at G
    # s0: 1 + 4 + 2 * .25 = 5.5; s1: 1 + 2 + 3 * .25 = 3.75; s2: 1 + 2 + 4 + 3 * .25 = 7.75
    # s3: 1 + .25 = 1.25
    assert r.cost.tolist() == [5.5, 3.75, 7.75, 1.25]
    assert r.stop_node.tolist() == [2, 1, 2, 0]
    assert r.path.tolist() == [[1, 0, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]]
    assert r.correct.tolist() == [True, True, False, True]
    # oracle: R by the jump (1 + 4), G (1 + 2), nobody right -> the root alone (1), A (1)
    o = oracle(graph, out)
    assert o.cost.tolist() == [5.0, 3.0, 1.0, 1.0]
    assert o.stop_node.tolist() == [2, 1, 0, 0]
    assert o.path.tolist() == [[1, 0, 1], [1, 1, 0], [1, 0, 0], [1, 0, 0]]
    assert evaluate_node(graph, out, "R").cost.tolist() == [5.0] * 4

    class BadChild:
        def decide(self, node: str, probs: Tensor) -> tuple[Tensor, Tensor]:
            n = probs.shape[0]
            return torch.zeros(n, dtype=torch.bool), torch.full((n,), 5)

    with pytest.raises(ValueError, match="outside"):
        evaluate(graph, out, BadChild())


def test_threshold_extremes(chain_data: tuple[Outputs, Outputs]) -> None:
    _, ev = chain_data
    grid = threshold_grid("max_prob", 11)
    assert grid[0] == 0.0
    assert grid[-2:] == (1.0, math.inf)
    assert threshold_grid("entropy", 5, num_classes=10)[0] == -1.0
    assert threshold_grid("entropy", 5, num_classes=10)[-1] == pytest.approx(math.log(10))
    res = {t: r for t, _, r in sweep_threshold(CHAIN, ev, "max_prob", grid)}
    assert res[math.inf].stop_fraction["C"] == 1.0
    assert res[math.inf].mean_cost == 7.0
    assert res[0.0].stop_fraction["A"] == 1.0
    assert res[0.0].mean_cost == 1.0
    ent = {t: r for t, _, r in sweep_threshold(CHAIN, ev, "entropy", (-1.0, math.log(10)))}
    assert ent[-1.0].stop_fraction["C"] == 1.0
    assert ent[math.log(10)].stop_fraction["A"] == 1.0
    # costs fall as the threshold falls; a float32 softmax can be exactly 1.0
    costs = [res[t].mean_cost for t in grid]
    assert costs == sorted(costs)
    sure = torch.tensor([[100.0, 0.0, 0.0]])
    assert ThresholdPolicy("max_prob", 1.0).decide("A", torch.softmax(sure, 1))[0].item()
    assert not ThresholdPolicy("max_prob", math.inf).decide("A", torch.softmax(sure, 1))[0].item()


def test_learned_extremes(
    chain_data: tuple[Outputs, Outputs], select_data: tuple[Outputs, Outputs]
) -> None:
    fit, ev = chain_data
    for graph, (f, e) in ((CHAIN, chain_data), (SELECT, select_data)):
        r = evaluate(graph, e, fit_learned(graph, f, 1e6))
        assert r.stop_fraction[graph.names[0]] == 1.0
        assert r.mean_cost == 1.0
    # lam = 0 and a terminal that is always right: continuing never hurts, so everyone goes on
    perfect = dict(fit.logits, C=10.0 * torch.nn.functional.one_hot(fit.labels, 10).float())
    out = Outputs(perfect, fit.labels)
    r = evaluate(CHAIN, out, fit_learned(CHAIN, out, 0.0))
    assert r.stop_fraction["C"] == 1.0
    assert r.accuracy == 100.0
    # lam = 0 on held-out data: as accurate as the best single node, up to a little noise
    r = evaluate(CHAIN, ev, fit_learned(CHAIN, fit, 0.0))
    best = max(evaluate_node(CHAIN, ev, n).accuracy for n in CHAIN.names)
    assert r.accuracy >= best - 1.0


def test_oracle_bounds_every_policy(chain_data: tuple[Outputs, Outputs]) -> None:
    fit, ev = chain_data
    o = oracle(CHAIN, ev)
    assert all(o.accuracy >= evaluate_node(CHAIN, ev, n).accuracy for n in CHAIN.names)
    runs = [r for _, _, r in sweep_learned(CHAIN, fit, ev, (0.0, 0.05, 0.2))]
    runs += [r for _, _, r in sweep_threshold(CHAIN, ev, "max_prob", (0.3, 0.6, 0.9))]
    for r in runs:
        # whatever a policy gets right, the oracle gets right at no more cost
        assert bool((o.correct | ~r.correct).all())
        assert bool((o.cost[r.correct] <= r.cost[r.correct]).all())
    assert o.mean_cost < runs[0].mean_cost  # lam = 0: near the oracle's accuracy, at more cost
    assert o.accuracy >= runs[0].accuracy


def test_learned_is_not_dominated_by_thresholds(
    chain_data: tuple[Outputs, Outputs], select_data: tuple[Outputs, Outputs]
) -> None:
    for graph, (fit, ev), margin in ((CHAIN, chain_data, 1.0), (SELECT, select_data, -2.0)):
        curve = [
            r for _, _, r in sweep_threshold(graph, ev, "max_prob", threshold_grid("max_prob", 101))
        ]
        for lam in (0.05, 0.1):
            r = evaluate(graph, ev, fit_learned(graph, fit, lam))
            # a real trade-off point: cheaper than going to the end, well above the root alone
            assert 1.0 < r.mean_cost < evaluate_node(graph, ev, graph.names[-1]).mean_cost
            assert r.accuracy > evaluate_node(graph, ev, "A").accuracy + 20
            cheaper = [t.accuracy for t in curve if t.mean_cost <= r.mean_cost]
            # chain: no threshold at no more cost beats it by > 1 point; selection: the learned
            # policy may jump A -> R, and beats the cascade by >= 2 points
            assert max(cheaper) <= r.accuracy + margin


def test_weights_decide_the_label() -> None:
    same = torch.tensor([[0.5, 0.3, 0.2]]).repeat(40, 1)
    # 10 samples where the first option is better by 1, 30 where the second is better by 0.1:
    # the majority says "second", the weights (10 vs 3) say "first"
    first = torch.cat([torch.zeros(10), torch.ones(30)]).double()
    second = torch.cat([torch.ones(10), torch.full((30,), 0.9)]).double()
    clf = Classifier.fit(same, first, second, kind="confidence")
    assert clf.predict(same).all()
    # the same with the weights swapped: better by 0.1 on 10, worse by 1 on 30
    first = torch.cat([torch.zeros(10), torch.ones(30)]).double()
    second = torch.cat([torch.full((10,), 0.1), torch.zeros(30)]).double()
    assert not Classifier.fit(same, first, second, kind="confidence").predict(same).any()
    # features decide where they separate the options
    other = torch.tensor([[0.9, 0.05, 0.05]]).repeat(20, 1)
    probs = torch.cat([same[:10], other])
    first = torch.cat([torch.zeros(10), torch.ones(20)]).double()
    clf = Classifier.fit(probs, first, 1 - first, kind="both")
    assert clf.predict(probs).tolist() == [True] * 10 + [False] * 20
    # nothing to learn: all ties, or a single class, give a constant without failing
    ties = Classifier.fit(probs, first, first)
    assert ties.predict(probs).all()
    assert bool((ties.weight == 0).all())
    one = Classifier.fit(probs, torch.ones(30).double(), torch.zeros(30).double())
    assert not one.predict(probs).any()


def test_the_bias_is_the_best_cut_of_the_weighted_objective() -> None:
    z = torch.tensor([3.0, 2.0, 2.0, 1.0, 0.0], dtype=torch.float64)
    gain = torch.tensor([1.0, 2.0, -0.5, -5.0, 1.0], dtype=torch.float64)
    b = _best_bias(z, gain)
    assert ((z + b) > 0).tolist() == [True, True, True, False, False]  # ties cut together
    assert _best_bias(z, -gain.abs()) < -3.0  # nothing pays: no sample picks the first
    assert (z + _best_bias(z, gain.abs()) > 0).all()  # everything pays
    # a fitted classifier cuts its own direction where the objective is best
    torch.manual_seed(0)
    probs = torch.softmax(3 * torch.randn(300, 4), 1)
    first = torch.rand(300, dtype=torch.float64)
    second = probs[:, 0].double() + 0.2 * torch.rand(300, dtype=torch.float64)
    clf = Classifier.fit(probs, first, second, kind="confidence")
    picked = float((second - first)[clf.predict(probs)].sum())
    z = clf.score(probs) - clf.bias
    cuts = [float((second - first)[z > t].sum()) for t in z.tolist()]
    assert picked >= max(cuts) - 1e-9


def test_state_round_trip(select_data: tuple[Outputs, Outputs]) -> None:
    fit, ev = select_data
    pol = fit_learned(SELECT, fit, 0.05, features="confidence", policy_cost=0.01)
    state, meta = pol.state(), json.loads(json.dumps(pol.meta()))
    assert {"A.stop.weight", "A.choice0.bias", "G.stop.std"} <= set(state)
    assert not any(k.startswith("R.") for k in state)  # the terminal has no decision
    back = LearnedPolicy.from_state(meta, state)
    for name in SELECT.names:
        for a, b in zip(
            pol.decide(name, ev.probs(name)), back.decide(name, ev.probs(name)), strict=True
        ):
            assert torch.equal(a, b)
    r1 = evaluate(SELECT, ev, pol, policy_cost=0.01)
    r2 = evaluate(SELECT, ev, back, policy_cost=0.01)
    assert torch.equal(r1.cost, r2.cost)
    assert torch.equal(r1.stop_node, r2.stop_node)
    assert back.lam == 0.05
    assert back.features == "confidence"
    del state["G.stop.mean"]
    with pytest.raises(ValueError, match=r"G\.stop\.mean"):
        LearnedPolicy.from_state(meta, state)


def test_one_sample_decisions_equal_the_batched_ones(
    select_data: tuple[Outputs, Outputs],
) -> None:
    """``decide_one`` (batch 1, Python floats) picks what ``decide`` picks, sample by sample."""
    fit, ev = select_data
    policies = [
        fit_learned(SELECT, fit, lam, features=k) for lam in (0.02, 0.1) for k in FEATURE_KINDS
    ]
    policies += [ThresholdPolicy("max_prob", 0.6), ThresholdPolicy("entropy", 0.8)]
    answers: set[int | None] = set()
    for pol in policies:
        for name in ("A", "G"):
            probs = ev.probs(name)
            stop, child = pol.decide(name, probs)
            batched = [
                None if s else int(c) for s, c in zip(stop.tolist(), child.tolist(), strict=True)
            ]
            assert [pol.decide_one(name, p) for p in probs.tolist()] == batched, (pol, name)
            answers |= set(batched)
    assert answers == {None, 0, 1}, "stop, and both children of A, must each be picked"


def test_selection_decides_at_a_from_a_alone(select_data: tuple[Outputs, Outputs]) -> None:
    fit, ev = select_data
    pol = fit_learned(SELECT, fit, 0.05)
    stop, child = pol.decide("A", ev.probs("A"))
    # a real selection: some samples stop at A, some go to G, some jump to R
    assert stop.any()
    assert (child == 0).any()
    assert (child == 1).any()
    g = torch.Generator().manual_seed(3)
    shuffled = Outputs(
        {
            "A": ev.logits["A"],
            "G": ev.logits["G"][torch.randperm(ev.n, generator=g)],
            "R": ev.logits["R"][torch.randperm(ev.n, generator=g)],
        },
        ev.labels,
    )
    stop2, child2 = pol.decide("A", shuffled.probs("A"))
    assert torch.equal(stop, stop2)
    assert torch.equal(child, child2)
    r, r2 = evaluate(SELECT, ev, pol), evaluate(SELECT, shuffled, pol)
    # what A decides is unchanged: the same samples stop at A, go to G, or jump to R ...
    assert torch.equal(r.stop_node == 0, r2.stop_node == 0)
    assert torch.equal(r.path[:, 1], r2.path[:, 1])
    assert torch.equal(r.path[:, 2] & ~r.path[:, 1], r2.path[:, 2] & ~r2.path[:, 1])
    # ... while what follows (G's decisions, the predictions of G and R) changes
    assert not torch.equal(r.stop_node, r2.stop_node)
    assert r.accuracy != r2.accuracy


def constant(first: bool) -> Classifier:
    """A decision that always (or never) picks its first option."""
    zero = torch.zeros(3, dtype=torch.float64)
    bias = torch.tensor(1.0 if first else -1.0, dtype=torch.float64)
    return Classifier(zero, bias, zero, torch.ones(3, dtype=torch.float64), "softmax")


def test_three_children_choice_chain() -> None:
    graph = PolicyGraph((Node("A", 1, ("B", "C", "D")), Node("B", 2), Node("C", 4), Node("D", 8)))
    probs = torch.full((1, 3), 1 / 3)
    picks = {}
    for yes0 in (True, False):
        for yes1 in (True, False):
            rule = NodeRule(3, constant(False), (constant(yes0), constant(yes1)))
            stop, child = rule.decide(probs)
            assert not stop.item()
            picks[yes0, yes1] = int(child.item())
    # the first choice that says yes wins; the last child takes what is left
    assert picks == {(True, True): 0, (True, False): 0, (False, True): 1, (False, False): 2}
    out = by_hand([(0, [[1, 0, 0]] * 4)] * 3, graph.names)
    cost = {}
    for yes0, yes1 in ((True, False), (False, True), (False, False)):
        rules = {"A": NodeRule(3, constant(False), (constant(yes0), constant(yes1)))}
        rules.update({n: NodeRule(0) for n in "BCD"})
        pol = LearnedPolicy(rules, 0.0, "softmax", 1, 0.0)
        cost[picks[yes0, yes1]] = evaluate(graph, out, pol, policy_cost=0.5).cost[0].item()
    # decisions at A: stop + choice0 for B; stop + choice0 + choice1 for C and for D
    assert cost == {0: 1 + 2 + 1.0, 1: 1 + 4 + 1.5, 2: 1 + 8 + 1.5}


def objective(r: PolicyResult, lam: float) -> float:
    return 1 - r.accuracy / 100 + lam * r.mean_cost


def test_learned_minimises_its_objective(
    chain_data: tuple[Outputs, Outputs], select_data: tuple[Outputs, Outputs]
) -> None:
    lam = 0.05
    for graph, (fit, _) in ((CHAIN, chain_data), (SELECT, select_data)):
        r = evaluate(graph, fit, fit_learned(graph, fit, lam))
        # on its own data, better than any fixed node (which constant classifiers could do)
        assert all(
            objective(r, lam) < objective(evaluate_node(graph, fit, n), lam) for n in graph.names
        )
    # a policy that knows decisions cost something stops earlier, and gains by it
    fit, _ = chain_data
    pc = 4.0  # lam * pc = 0.2 of loss per decision
    plain, aware = fit_learned(CHAIN, fit, lam), fit_learned(CHAIN, fit, lam, policy_cost=pc)
    r_plain = evaluate(CHAIN, fit, plain, policy_cost=pc)
    r_aware = evaluate(CHAIN, fit, aware, policy_cost=pc)
    assert r_aware.stop_fraction["A"] > r_plain.stop_fraction["A"] + 0.05
    assert objective(r_aware, lam) < objective(r_plain, lam)


def test_the_operating_point_holds_the_budget_to_the_paired_bound(
    chain_data: tuple[Outputs, Outputs],
) -> None:
    """Each lambda's row carries its paired loss on the fit split and the bound; with a
    confidence the chosen policy is the cheapest whose bound is within the budget, so it
    costs at least the plain rule's choice (the bound is never below the loss)."""
    from dyve.mechanisms.adaptive.study import run_study

    fit, held = chain_data
    lams = (0.0, 0.1, 0.2, 0.24, 0.3, 0.36, 0.4, 0.5)
    kw = dict(reference="C", lams=lams, budget_pp=1.5, refine=0, crossfit=False, rule="bound")
    plain = run_study(CHAIN, fit, held, confidence=None, **kw)
    bound = run_study(CHAIN, fit, held, confidence=0.9, **kw)
    ref = evaluate_node(CHAIN, fit, "C").accuracy
    for p, q in zip(plain.learned, bound.learned, strict=True):
        assert p["fit_loss_pp"] == pytest.approx(ref - p["fit_top1"], abs=1e-2)
        assert p["fit_loss_bound_pp"] == p["fit_loss_pp"]
        assert q["fit_loss_pp"] == p["fit_loss_pp"]
        assert q["fit_loss_bound_pp"] >= q["fit_loss_pp"]
    assert plain.chosen is not None
    assert bound.chosen is not None
    b = bound.learned[bound.chosen]
    assert b["fit_loss_bound_pp"] <= 1.5
    assert b["fit_macs_mean"] >= plain.learned[plain.chosen]["fit_macs_mean"]
    cheaper = [q for q in bound.learned if q["fit_macs_mean"] < b["fit_macs_mean"]]
    assert all(q["fit_loss_bound_pp"] > 1.5 for q in cheaper)
    # on this data the bound changes the choice: some cheaper lambda passes on its loss alone
    assert any(q["fit_loss_pp"] <= 1.5 for q in cheaper)
    assert bound.as_dict()["confidence"] == 0.9
    with pytest.raises(ValueError, match="confidence"):
        run_study(CHAIN, fit, held, confidence=1.0, **kw)


def test_the_rule_widens_the_bound_for_the_lambdas_compared(
    chain_data: tuple[Outputs, Outputs],
) -> None:
    """By default each lambda's bound is at 1 - 0.1 / k for the k lambdas compared (grid
    and bisection, fixed in advance: Bonferroni). On this data a 1.7 pp budget passes
    lambda 0.3 on its own bound, but not on the widened one: the choice falls back to a
    costlier lambda, every cheaper one failing the widened bound."""
    from dyve.eval.paired import PairedLoss
    from dyve.mechanisms.adaptive.study import run_study

    fit, held = chain_data
    lams = (0.0, 0.1, 0.2, 0.24, 0.3, 0.36, 0.4, 0.5)
    kw = dict(reference="C", lams=lams, budget_pp=1.7, refine=0, crossfit=False)
    per_point = run_study(CHAIN, fit, held, rule="bound", **kw)
    family = run_study(CHAIN, fit, held, **kw)
    assert family.as_dict()["rule"] == "bonferroni"
    assert family.chosen is not None
    assert per_point.chosen is not None
    ref = evaluate_node(CHAIN, fit, "C").correct.numpy()
    for pol, row in zip(family.policies, family.learned, strict=True):
        ok = evaluate(CHAIN, fit, pol).correct.numpy()
        wide = PairedLoss.of(ref, ok).bound_pp(1 - 0.1 / len(lams))
        assert row["fit_loss_bound_pp"] == pytest.approx(wide, abs=1e-3)
    chosen = family.learned[family.chosen]
    assert chosen["fit_loss_bound_pp"] <= 1.7
    cheaper = [p for p in family.learned if p["fit_macs_mean"] < chosen["fit_macs_mean"]]
    assert all(p["fit_loss_bound_pp"] > 1.7 for p in cheaper)
    assert family.chosen != per_point.chosen
    assert chosen["fit_macs_mean"] > per_point.learned[per_point.chosen]["fit_macs_mean"]
    with pytest.raises(ValueError, match="rule"):
        run_study(CHAIN, fit, held, **{**kw, "lams": (0.0,)}, rule="cheapest")


def test_cross_fitting_judges_each_lambda_out_of_sample(
    chain_data: tuple[Outputs, Outputs],
) -> None:
    """With ``crossfit`` a lambda's fit loss is pooled from policies fitted on one half of
    the fit split (even / odd rows) and judged on the other; the policy kept is the one
    fitted on the whole split."""
    from dyve.eval.paired import PairedLoss
    from dyve.mechanisms.adaptive.study import run_study

    fit, held = chain_data
    lams = (0.0, 0.1, 0.3)
    study = run_study(CHAIN, fit, held, reference="C", lams=lams, refine=0, budget_pp=1.5)
    unit = PolicyGraph(tuple(Node(n.name, n.cost / 7.0, n.children) for n in CHAIN.nodes))
    ref = evaluate_node(CHAIN, fit, "C").correct.numpy()
    halves = (torch.arange(0, fit.n, 2), torch.arange(1, fit.n, 2))
    worse = better = 0
    for a, b in (halves, halves[::-1]):
        pol = fit_learned(unit, fit.subset(a), 0.1)
        part = PairedLoss.of(ref[b.numpy()], evaluate(CHAIN, fit.subset(b), pol).correct.numpy())
        worse, better = worse + part.worse, better + part.better
    row = study.learned[1]
    assert row["fit_loss_pp"] == pytest.approx(PairedLoss(fit.n, worse, better).loss_pp, abs=1e-3)
    kept = fit_learned(unit, fit, 0.1)
    assert evaluate(CHAIN, fit, kept).accuracy == pytest.approx(row["fit_top1"], abs=1e-3)
    assert study.as_dict()["crossfit"] is True
    if study.chosen is not None:
        assert study.learned[study.chosen]["fit_loss_bound_pp"] <= 1.5
    with pytest.raises(ValueError, match="at least 4"):
        run_study(CHAIN, fit.subset(torch.arange(3)), held, reference="C", lams=lams)


def test_a_classifier_does_not_depend_on_the_thread_count() -> None:
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(20000, 10, generator=g), 1)
    first = torch.rand(20000, generator=g).double()
    second = torch.rand(20000, generator=g).double()
    old = torch.get_num_threads()
    fits = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            fits.append(Classifier.fit(probs, first, second))
    finally:
        torch.set_num_threads(old)
    # on two threads without the fix the weights differed by about 2e-15
    assert torch.equal(fits[0].weight, fits[1].weight)
    assert torch.equal(fits[0].bias, fits[1].bias)
