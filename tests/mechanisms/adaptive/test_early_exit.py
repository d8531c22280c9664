"""Early exit: the core's exit points, the mechanism, and agreement with the cached study."""

from __future__ import annotations

import pytest
import torch

from dyve.data import batches, load_sample
from dyve.dynamic import DynamicNet, load, save
from dyve.errors import DyveError
from dyve.eval.splits import choose_splits
from dyve.mechanisms import EarlyExit
from dyve.mechanisms.adaptive.evaluate import evaluate
from dyve.mechanisms.adaptive.graph import Outputs, PolicyGraph
from dyve.mechanisms.adaptive.heads import collect
from dyve.mechanisms.adaptive.job import JobConfig, fit_heads
from dyve.mechanisms.adaptive.policy import fit_learned
from dyve.models import create
from dyve.testing.contract import graded_inputs


def _net(backend: str = "fast", **cfg: object) -> tuple[DynamicNet, EarlyExit]:
    """ResNet-20 with exit heads; ``net(x)`` on the per-module path, which these tests
    compare bit for bit with ``net.run`` (the native segments: test_native_exits.py)."""
    net = DynamicNet(create("resnet20_cifar", pretrained=True), backend=backend)
    mech = EarlyExit(**cfg)  # type: ignore[arg-type]
    mech.native_program = False
    net.attach(mech)
    return net, mech


def test_default_exits_are_every_stage_but_the_last() -> None:
    _, mech = _net()
    assert list(mech.heads()) == ["layer1", "layer2"]
    _, every = _net(every=2)
    assert list(every.heads()) == ["layer1.1", "layer2.0", "layer2.2", "layer3.1"]
    with pytest.raises(DyveError, match="not exit points"):
        _net(exits=("conv1",))
    with pytest.raises(DyveError, match="convs must be >= 0, or -1"):
        _net(convs=-2)


@pytest.mark.parametrize("backend", ["fast", "emulated"])
def test_everyone_leaving_at_the_first_exit_pays_only_what_ran(backend: str) -> None:
    net, mech = _net(backend, policy="max_prob", threshold=0.0)
    x = graded_inputs(32)[:6]
    res = net.run(x)
    head = mech.heads()["layer1"]
    # stem + layer1 + the first head, nothing after it
    expected = net.graph.macs_through("layer1") + head.macs
    assert torch.all(res.macs == expected)
    assert res.trace.exit_at is not None
    assert torch.all(res.trace.exit_at == 0)
    with torch.no_grad():
        feat = net.detach().layer1(net.detach().relu(net.detach().bn1(net.detach().conv1(x))))
        assert torch.allclose(res.logits, head(feat), atol=1e-5)
    assert torch.equal(net(x), res.logits)
    assert res.trace.exit_fraction() == {"layer1": 1.0, "layer2": 0.0, "end": 0.0}


def test_nobody_leaving_costs_the_backbone_plus_every_head() -> None:
    net, mech = _net(policy="entropy", threshold=-1.0)
    x = graded_inputs(32)[:4]
    res = net.run(x)
    heads = sum(h.macs for h in mech.heads().values())
    assert torch.all(res.macs == net.static_macs + heads)
    with torch.no_grad():
        assert torch.equal(res.logits, net.detach()(x))


@pytest.mark.parametrize("convs", [0, -1])
def test_learned_policy_runs_exactly_as_the_cached_study_predicts(convs: int) -> None:
    """Heads (linear, or conv heads trained on the cached maps), then a policy, fitted on two
    thirds of the embedded sample; the rest run for real."""
    sample = load_sample()
    train_set, fit_set = sample.subset(slice(0, 300)), sample.subset(slice(300, 600))
    held_set = sample.subset(slice(600, 900))
    net, mech = _net(pool=4, convs=convs)
    dense, norm = net.detach(), create("resnet20_cifar").dyve_info.norm
    points = list(mech.heads())
    heads = mech.heads()
    reads = {p: h.cached for p, h in heads.items()}
    fit_heads(heads, collect(dense, reads, train_set, norm))
    fit_cache = collect(dense, reads, fit_set, norm)
    held_cache = collect(dense, reads, held_set, norm)

    def outs(c: dict[str, torch.Tensor]) -> Outputs:
        with torch.no_grad():
            logits = {p: heads[p].from_cache(c[f"feat.{p}"]) for p in points}
        return Outputs({**logits, "final": c["logits"]}, c["labels"])

    g = net.graph
    t1, t2 = g.macs_through("layer1"), g.macs_through("layer2")
    hm = [h.macs for h in mech.heads().values()]
    graph = PolicyGraph.chain(
        ["layer1", "layer2", "final"], [t1 + hm[0], t2 - t1 + hm[1], g.total_macs - t2]
    )
    dim = mech.modules["layer1"].weight.shape[1]
    unit = PolicyGraph.chain(graph.names, [n.cost / g.total_macs for n in graph.nodes])
    policies = [
        fit_learned(unit, outs(fit_cache), lam, policy_cost=dim / g.total_macs)
        for lam in (0.05, 0.2)
    ]
    mech.store_policies(policies)
    net.set_knobs(policy="learned", lam=0.2)
    predicted = evaluate(graph, outs(held_cache), policies[1], policy_cost=dim)
    assert 0.05 < float((predicted.stop_node < 2).double().mean()) < 0.95, "exits unused"
    x, y = next(batches(held_set, 300, norm))
    for backend in ("fast", "emulated"):
        net.backend = backend
        res = net.run(x)
        assert res.trace.exit_at is not None
        at = torch.where(res.trace.exit_at < 0, 2, res.trace.exit_at)
        assert torch.equal(at, predicted.stop_node), backend
        assert torch.allclose(res.macs, predicted.cost), backend
        assert torch.equal(res.logits.argmax(1) == y, predicted.correct), backend

    # batch 1 decides on Python floats (decide_one), and forward without a trace returns
    # at the exit with no bookkeeping: the same exits, image by image
    net.backend = "fast"
    for i in range(len(x)):
        one = net.run(x[i : i + 1])
        assert one.trace.exit_at is not None
        assert int(one.trace.exit_at[0]) == int(res.trace.exit_at[i]), i
        assert torch.equal(net(x[i : i + 1]), one.logits), i

    # forced (how stage latencies are measured): everyone leaves where told, and every exit
    # on the way still evaluates its head and its policy, whose cost is paid
    ask = [hm[0] + dim, hm[1] + dim]
    for leave, at, cost in (
        ("layer1", 0, t1 + ask[0]),
        ("layer2", 1, t2 + sum(ask)),
        (None, -1, g.total_macs + sum(ask)),
    ):
        mech.force(leave)
        res = net.run(x)
        assert res.trace.exit_at is not None
        assert torch.all(res.trace.exit_at == at), leave
        assert torch.allclose(res.macs, torch.full_like(res.macs, float(cost))), leave
    mech.unforce()
    again = net.run(x).trace.exit_at
    assert again is not None
    assert torch.equal(torch.where(again < 0, 2, again), predicted.stop_node)
    net.set_knobs(policy="off")  # forcing still reaches the exits (the stored policy is asked)
    mech.force("layer1")
    assert torch.all(net.run(x).trace.exit_at == 0)
    mech.unforce()
    with pytest.raises(DyveError, match="no exit 'layer3'"):
        mech.force("layer3")


def test_stored_policies_survive_save_and_load(tmp_path: object) -> None:
    from pathlib import Path

    net, mech = _net()
    graph = PolicyGraph.chain(["layer1", "layer2", "final"], [0.3, 0.3, 0.4])
    gen = torch.Generator().manual_seed(0)
    logits = {n: torch.randn(200, 10, generator=gen) * 3 for n in graph.names}
    labels = torch.randint(0, 10, (200,), generator=gen)
    outs = Outputs(logits, labels)
    mech.store_policies([fit_learned(graph, outs, lam) for lam in (0.0, 0.5)])
    net.set_knobs(policy="learned", lam=0.5)
    folder = Path(str(tmp_path)) / "run"
    save(net, folder)
    again = load(folder)
    again.mechanism("early_exit").native_program = False  # per module, as net runs
    x = graded_inputs(32)[:8]
    assert torch.equal(net(x), again(x))
    assert again.mechanism("early_exit").config.lams == (0.0, 0.5)
    with pytest.raises(DyveError, match="was not fitted"):
        again.set_knobs(lam=0.25)


def test_auto_splits_never_fit_on_what_the_weights_saw() -> None:
    cfg = JobConfig(models=("resnet56_cifar",))
    assert choose_splits(cfg.fit_split, cfg.eval_split, heldout=True) == ("val", "test")
    assert choose_splits(cfg.fit_split, cfg.eval_split, heldout=False) == ("test-a", "test-b")
    with pytest.raises(ValueError, match="must differ"):
        choose_splits("val", "val", True)
