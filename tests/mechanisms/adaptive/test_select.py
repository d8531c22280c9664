"""Network selection: real execution agrees with the cached study; save and load."""

from __future__ import annotations

from pathlib import Path

import torch

from dyve.data import batches, load_sample
from dyve.graph import discover
from dyve.mechanisms.adaptive.evaluate import evaluate
from dyve.mechanisms.adaptive.graph import Outputs
from dyve.mechanisms.adaptive.heads import collect
from dyve.mechanisms.adaptive.policy import fit_learned
from dyve.mechanisms.adaptive.select import Selection, cascade_graph
from dyve.mechanisms.adaptive.select_job import load_selection, save_policies
from dyve.mechanisms.dyvedeep import native as native_kernels
from dyve.models import create

NETS = ("caffe_cifar10", "resnet20_cifar", "vgg16_bn_cifar_w025")


def test_cascade_graph_allows_the_jump_to_the_largest() -> None:
    g = cascade_graph(["a", "b", "c"], [1, 2, 4])
    assert [n.children for n in g.nodes] == [("b", "c"), ("c",), ()]


def test_selection_runs_exactly_as_the_cached_study_predicts(tmp_path: Path) -> None:
    sample = load_sample()
    fit_set, held_set = sample.subset(slice(0, 500)), sample.subset(slice(500, 700))
    nets = {m: create(m, pretrained=True) for m in NETS}
    norm = nets[NETS[0]].dyve_info.norm

    def outs(ds: object) -> Outputs:
        c = {m: collect(n, {}, ds, norm) for m, n in nets.items()}  # type: ignore[arg-type]
        return Outputs({m: v["logits"] for m, v in c.items()}, c[NETS[0]]["labels"])

    graph = cascade_graph(NETS, [discover(n).total_macs for n in nets.values()])
    full = max(n.cost for n in graph.nodes)
    unit = cascade_graph(NETS, [n.cost / full for n in graph.nodes])
    policy = fit_learned(unit, outs(fit_set), 0.05, policy_cost=17 / full)
    predicted = evaluate(graph, outs(held_set), policy, policy_cost=17)
    stops = predicted.stop_fraction
    assert min(stops.values()) > 0.0, f"every network should be the stop of some: {stops}"
    assert float(predicted.path[:, 1].double().mean()) < 1.0, "R20 skipped by the jump for some"
    system = Selection(nets, graph, policy, policy_macs=17)
    x, y = next(batches(held_set, 200, norm))
    res = system.run(x)
    assert torch.allclose(res.macs, predicted.cost)
    assert torch.equal(res.logits.argmax(1) == y, predicted.correct)
    ran = torch.stack([res.trace.units[m] == 0 for m in NETS], 1)
    assert torch.equal(ran, predicted.path)
    one = torch.cat([system.run(x[i : i + 1]).logits for i in range(8)])
    assert torch.allclose(one, res.logits[:8], atol=1e-4)
    # forward routes the same way without the trace (what latency is measured on); at
    # batch 1 it decides on Python floats (decide_one): the same network for every image
    native = system(x)
    system.native = False  # the PyTorch modules: bit for bit
    assert torch.equal(system(x), res.logits)
    assert torch.equal(torch.cat([system(x[i : i + 1]) for i in range(8)]), one)
    for i in range(8, len(x)):
        assert torch.equal(system(x[i : i + 1]), system.run(x[i : i + 1]).logits), i
    # natively (the default): each network one program; same routes, logits to 1e-5
    system.native = True
    assert torch.allclose(native, res.logits, rtol=0, atol=1e-4)
    ones = torch.cat([system(x[i : i + 1]) for i in range(len(x))])
    assert torch.allclose(ones, res.logits, rtol=0, atol=1e-4)
    if native_kernels.available():
        assert all(p is not None for p in system._programs.values())
        assert set(system._programs) == set(NETS)
        # frozen (deployment): programs rebuilt, weights not checked on each call
        system.freeze()
        assert system._programs == {}
        assert torch.allclose(system(x), native, rtol=0, atol=1e-6)
        assert all(p.frozen for p in system._programs.values())
        system.freeze(False)
    # a saved run rebuilds the same system
    save_policies(tmp_path, NETS, [policy], 0, 17)
    again = load_selection(tmp_path)
    assert torch.equal(again.run(x).logits, res.logits)
