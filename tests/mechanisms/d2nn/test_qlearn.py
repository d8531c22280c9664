"""D2NN's training signals: bag F1, Q targets by the recursion, losses, policies."""

from __future__ import annotations

import torch

from dyve.mechanisms.d2nn.mechanism import EpsGreedy, Greedy
from dyve.mechanisms.d2nn.module import Execution
from dyve.mechanisms.d2nn.qlearn import bag_f1, final_reward, q_loss, q_targets, task_loss
from dyve.models import create


def test_bag_f1_per_bag_and_empty_bags() -> None:
    pred = torch.tensor([1, 0, 1, 0, 0, 0, 0, 0])
    y = torch.tensor([1, 1, 0, 0, 0, 0, 0, 0])
    f1 = bag_f1(pred, y, 4)
    assert torch.allclose(f1, torch.tensor([0.5, 1.0]))  # tp 1, fp 1, fn 1; then nothing
    r = final_reward(torch.nn.functional.one_hot(pred, 2).float(), y, "f1", bag=4)
    assert r.tolist() == [0.5] * 4 + [1.0] * 4  # shared by every sample of its bag


def _cascade_execution() -> tuple[object, Execution]:
    """Sample 0 stops at q1; sample 1 continues, then stops at q2; sample 2 runs all."""
    g = create("d2nn_cascade_cifar")
    t, f = True, False
    ran = {
        "s1": [t, t, t], "h1": [t, t, t], "q1": [t, t, t], "stop1": [t, f, f],
        "s2": [f, t, t], "h2": [f, t, t], "q2": [f, t, t], "stop2": [f, t, f],
        "s3": [f, f, t], "h3": [f, f, t], "out": [t, t, t],
    }  # fmt: skip
    q = {
        "q1": torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]]),
        "q2": torch.tensor([[0.0, 0.0], [0.6, 0.4], [0.1, 0.5]]),
    }
    action = {"q1": torch.tensor([0, 1, 1]), "q2": torch.tensor([-1, 0, 1])}
    exe = Execution(
        torch.zeros(3, 2), {k: torch.tensor(v) for k, v in ran.items()}, q, action,
        torch.zeros(3, dtype=torch.float64),
    )  # fmt: skip
    return g, exe


def test_q_targets_follow_the_recursion() -> None:
    g, exe = _cascade_execution()
    lam = 0.5
    final = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    t = q_targets(g, exe, final, lam)  # type: ignore[arg-type]
    m = g.node_macs  # type: ignore[attr-defined]
    norm = g.max_path_macs  # type: ignore[attr-defined]
    c2 = (m["s2"] + m["h2"] + m["q2"]) / norm  # charged to q1's "go"
    c3 = (m["s3"] + m["h3"]) / norm  # charged to q2's "go"
    # last decision: immediate reward + final reward
    assert torch.allclose(t["q2"][1:], torch.tensor([0.0, 1.0 - lam * c3], dtype=torch.float64))
    # q1: stop -> final reward; go -> cost + max Q of q2
    expected = torch.tensor([1.0, -lam * c2 + 0.6, -lam * c2 + 0.5], dtype=torch.float64)
    assert torch.allclose(t["q1"], expected)


def test_q_loss_uses_the_taken_actions_of_samples_that_decided() -> None:
    _, exe = _cascade_execution()
    targets = {
        "q1": torch.tensor([0.9, 0.8, 0.7], dtype=torch.float64),  # all exact
        "q2": torch.tensor([99.0, 0.6, 0.5], dtype=torch.float64),  # row 0 never decided
    }
    assert float(q_loss(exe, targets)) == 0.0
    targets["q2"][2] = 1.5
    assert abs(float(q_loss(exe, targets)) - 0.5 * 1.0 / 2) < 1e-6  # mean of (0, 1) / 2


def test_task_loss_skips_samples_whose_class_got_the_default() -> None:
    out = torch.tensor([[2.0, -1e4], [0.0, 1.0]])
    y = torch.tensor([1, 1])
    loss = task_loss(out, y, -5e3)
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(out[1:], y[1:]))


def test_policies_bias_and_exploration() -> None:
    costs = {"q": torch.tensor([0.1, 0.9], dtype=torch.float64)}
    q = torch.tensor([[0.5, 0.6], [0.0, 1.0]])
    rows = torch.arange(2)
    assert Greedy(costs)("q", q, rows).tolist() == [1, 1]
    assert Greedy(costs, bias=0.5)("q", q, rows).tolist() == [0, 1]  # 0.45 vs 0.15; -.05 vs .55
    gen = torch.Generator().manual_seed(0)
    assert EpsGreedy(costs, 0.0, gen)("q", q, rows).tolist() == [1, 1]
    many = torch.zeros(1000, 2)
    many[:, 1] = 1.0
    picks = EpsGreedy(costs, 1.0, gen)("q", many, torch.arange(1000))
    assert 400 < int((picks == 0).sum()) < 600  # uniform over the two actions


def test_static_frontier_and_cost_at_equal_accuracy() -> None:
    from dyve.mechanisms.d2nn.results import cost_at, frontier

    pts = [(1.0, 50.0), (2.0, 60.0), (3.0, 61.0), (4.0, 70.0), (2.5, 55.0)]
    # (3, 61) lies under the chord from (2, 60) to (4, 70): a mixture beats it
    assert frontier(pts) == [(1.0, 50.0), (2.0, 60.0), (4.0, 70.0)]
    front = frontier(pts)
    assert cost_at(front, 65.0) == (3.0, False)  # half of each end
    assert cost_at(front, 75.0) == (4.0, True)  # beyond every static path
    assert cost_at(front, 40.0) is None  # poorer than the cheapest: no comparison
