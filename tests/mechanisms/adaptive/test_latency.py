"""Stage latencies: forced paths, the table's arithmetic, and curve points in ms."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

import dyve.mechanisms.adaptive.latency as latency
from dyve.mechanisms.adaptive.evaluate import evaluate
from dyve.mechanisms.adaptive.graph import Outputs
from dyve.mechanisms.adaptive.latency import ForcedPolicy, annotate, point_latency, stage_latency
from dyve.mechanisms.adaptive.policy import ThresholdPolicy
from dyve.mechanisms.adaptive.select import Selection, cascade_graph
from dyve.mechanisms.adaptive.study import run_study
from dyve.mechanisms.dyvedeep import native

NAMES = ("a", "b", "c")


class Counting:
    """A policy that records every node it is asked at (and always says stop)."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def decide(self, node: str, probs: Tensor) -> tuple[Tensor, Tensor]:
        self.asked.append(node)
        return ThresholdPolicy("max_prob", 0.0).decide(node, probs)


class Const(nn.Module):
    """A 'network' whose logits favour class ``k``."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: Tensor) -> Tensor:
        out = torch.zeros(x.shape[0], 10)
        out[:, self.k] = 1.0
        return out


def _selection(policy: Any) -> Selection:
    graph = cascade_graph(NAMES, [1.0, 2.0, 4.0])
    return Selection({n: Const(i) for i, n in enumerate(NAMES)}, graph, policy)


def test_forced_policy_follows_its_path_and_still_asks_the_real_policy() -> None:
    graph = cascade_graph(NAMES, [1.0, 2.0, 4.0])
    x = torch.zeros(3, 3, 8, 8)
    for path, last in ((("a",), 0), (("a", "b"), 1), (("a", "b", "c"), 2), (("a", "c"), 2)):
        inner = Counting()
        system = _selection(ForcedPolicy(inner, graph, path))
        res = system.run(x)
        ran = [n for n in NAMES if bool((res.trace.units[n] == 0).all())]
        assert ran == list(path)
        assert torch.equal(res.logits.argmax(1), torch.full((3,), last))
        # asked wherever the path has a decision (the terminal node has none)
        assert inner.asked == [n for n in path if graph.node(n).children]
    with pytest.raises(ValueError, match="starts at the root"):
        ForcedPolicy(Counting(), graph, ("b",))
    with pytest.raises(ValueError, match="not a child"):
        ForcedPolicy(Counting(), graph, ("a", "b", "a"))


def test_stage_table_is_path_differences_and_points_weigh_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    graph = cascade_graph(NAMES, [1.0, 2.0, 4.0])
    fake = {"dynamic": 3.0, "alone:a": 0.8, "alone:b": 1.5, "alone:c": 5.0}
    fake |= {"path:a": 1.0, "path:b": 2.7, "path:c": 6.5}  # c's cheapest path is a -> c
    seen: dict[str, Any] = {}

    def timed(fns: dict[str, Any], images: list[Tensor]) -> dict[str, float]:
        seen.update(fns)
        return {k: fake[k] for k in fns}

    monkeypatch.setattr(latency, "mean_latency", timed)
    nets = {n: Const(i) for i, n in enumerate(NAMES)}
    ms, table = stage_latency(
        graph,
        lambda p: p,
        nets,
        lambda x: x,
        [torch.zeros(1, 3, 8, 8)],  # type: ignore[arg-type, return-value]
    )
    assert ms == 3.0
    # round-robin order: the system right after the last network alone (its reference),
    # never right after its own forced runs, which share its programs (a warm start)
    assert list(seen)[-2:] == ["alone:c", "dynamic"]
    assert next(iter(seen)).startswith("path:")
    assert seen["path:c"] == ("a", "c")
    assert seen["path:b"] == ("a", "b")
    assert table["stage_ms"] == pytest.approx({"a": 1.0, "b": 1.7, "c": 5.5})
    assert table["alone_ms"] == {"a": 0.8, "b": 1.5, "c": 5.0}

    # every point: the stage latencies weighted by the share of samples that ran each node
    g = torch.Generator().manual_seed(0)
    logits = {n: torch.randn(400, 10, generator=g) * 3 for n in NAMES}
    out = Outputs(logits, torch.randint(0, 10, (400,), generator=g))
    study = run_study(graph, out, out, reference="c", lams=(0.0, 0.1, 1.0), refine=0)
    annotate(study, table)
    for p in [*study.learned, *study.baselines["entropy"], study.oracle]:
        manual = sum(p["ran_fraction"][n] * table["stage_ms"][n] for n in NAMES)
        assert p["latency_ms"] == pytest.approx(manual)
        assert p["speedup_est"] == pytest.approx(5.0 / manual)
    # ran_fraction is the policy's real paths: check one point against evaluate()
    res = evaluate(graph, out, study.policies[1])
    shares = res.path.double().mean(0)
    expected = float(sum(shares[i] * table["stage_ms"][n] for i, n in enumerate(NAMES)))
    assert point_latency(study.learned[1], table["stage_ms"]) == pytest.approx(expected, abs=1e-3)
    # single networks are what they cost alone; the curve keeps the table
    assert study.single["b"]["latency_ms"] == 1.5
    assert study.single["c"]["speedup_est"] == 1.0
    assert study.as_dict()["latency"] is table


def test_forward_keeps_a_network_that_cannot_be_lowered() -> None:
    """A network the native runtime cannot lower (here: no conv, logits from constants)
    runs as its module, and the decision is remembered."""
    system = _selection(Counting())
    x = torch.zeros(2, 3, 8, 8)
    out = system(x)
    assert torch.equal(out, system.run(x).logits)
    if native.available():
        assert system._programs
        assert all(p is None for p in system._programs.values())
