"""D2NN on the native runtime: a whole graph of modules and controllers as one program.

On every architecture with random weights whose controllers disagree across samples: the
program gives the per-module outputs, and the MACs its kernels executed per sample are
the per-module path's (the same nodes ran); its static network is the plain graph's; on
the shipped demo run ``net(x)`` runs the program, a knob change rebuilds it, the knob off
keeps the identity contract, and the bench's dense reference is the static program.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dyve.data import batches, load_sample
from dyve.demo import runs_dir
from dyve.dynamic import DynamicNet, load
from dyve.eval.latency import num_threads
from dyve.mechanisms.d2nn import archs
from dyve.mechanisms.d2nn.combine import Combine
from dyve.mechanisms.d2nn.graph import Edge
from dyve.mechanisms.d2nn.mechanism import D2NN, EpsGreedy, Greedy
from dyve.mechanisms.d2nn.module import D2Graph
from dyve.mechanisms.d2nn.program import GraphProgram
from dyve.mechanisms.dyvedeep import native
from dyve.mechanisms.dyvedeep.lower import Unsupported
from dyve.mechanisms.dyvedeep.program import dense_program
from dyve.models import model_info

pytestmark = pytest.mark.skipif(not native.available(), reason="the native kernels are unavailable")
RTOL = 1e-5


def _graph(arch: str, x: torch.Tensor) -> D2Graph:
    """``arch`` with random weights, batch norms that are not the identity, and
    controllers that disagree across the samples of ``x``: each one's last layer is
    shifted so that every action's Q-value is centred on the samples reaching it."""
    torch.manual_seed(0)
    g = archs.build(arch).eval()
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2)
                m.weight.normal_(1, 0.2)
                m.bias.normal_(0, 0.2)
        for name in g.plan.controllers:
            ex = g.execute(x, Greedy(g.action_costs()))
            last = [m for m in g.controllers[name].modules() if isinstance(m, nn.Linear)][-1]
            last.bias.sub_(ex.q[name][ex.ran[name]].median(0).values)
    return g


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool((a - b).abs().max() <= RTOL * b.abs().max())


@pytest.mark.parametrize("arch", archs.ARCHS)
@pytest.mark.parametrize("threads", [1, 2])
def test_the_program_runs_the_per_module_paths(arch: str, threads: int) -> None:
    """Greedy decisions, with and without a cost bias: the same outputs, and per sample the
    kernels executed exactly the MACs of the nodes the per-module path ran; the samples
    took several paths, so a wrong flag would show."""
    x = torch.randn(24, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    g = _graph(arch, x)
    for bias in (0.0, 0.3):
        g.policy = Greedy(g.action_costs(), bias)
        prog = GraphProgram(g, x)
        with torch.no_grad(), num_threads(threads):
            ref = g.execute(x, g.policy)
            y, stats, _ = prog.run(x)
            one = torch.cat([prog.run(x[i : i + 1])[0] for i in range(len(x))])
        assert _close(y, ref.out)
        assert torch.equal(one, y)
        executed = stats[:, :, native.STATS.index("macs")].sum(0)
        assert torch.equal(executed, ref.macs)
        if bias == 0.0:
            assert len(ref.macs.unique()) >= 2, "the controllers agree on every sample"


@pytest.mark.parametrize("arch", archs.ARCHS)
def test_the_static_program_is_the_static_network(arch: str) -> None:
    """Policy None: every controller at its static action, not evaluated (its layers run
    for no sample); also a static path other than the default (``static_actions``)."""
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    g = _graph(arch, x)
    choices = [None, {c: 0 for c in g.plan.controllers}]
    for fixed in choices:
        g.static_actions = fixed
        prog = dense_program(g, x, kind=GraphProgram)
        assert prog is not None
        with torch.no_grad():
            y, stats, _ = prog.run(x)
            assert _close(y, g(x))
        macs = stats[:, :, native.STATS.index("macs")].sum(0)
        assert torch.equal(macs, torch.full_like(macs, g.path_macs(g.static_choice())))


def test_other_policies_and_merges_run_per_module() -> None:
    x = torch.randn(2, 3, 32, 32)
    g = _graph("highlow", x)
    g.policy = EpsGreedy(g.action_costs(), 0.1, torch.Generator())
    with pytest.raises(Unsupported, match="EpsGreedy"):
        GraphProgram(g, x)

    class Max(Combine):
        def forward(self, values: list[torch.Tensor], ran: list[torch.Tensor]) -> torch.Tensor:
            return torch.maximum(values[0], values[1])

    spec = archs.highlow()
    spec.modules["out"] = Max()
    spec.nodes["out"] = spec.nodes["out"].__class__(
        "out", "regular", (Edge("low", 0.0), Edge("high", 0.0))
    )
    other = D2Graph(spec, x[:1]).eval()
    other.policy = Greedy(other.action_costs())
    with pytest.raises(Unsupported, match="merging module Max"):
        GraphProgram(other, x)


def _demo() -> tuple[DynamicNet, D2NN, torch.Tensor]:
    net = load(runs_dir() / "d2nn_hierarchical")
    net.backend = "fast"
    mech = net.mechanisms[0]
    assert isinstance(mech, D2NN)
    x, _ = next(batches(load_sample(), 32, model_info(net.backbone).norm))
    return net.eval(), mech, x


def test_the_shipped_run_calls_its_program() -> None:
    """``net(x)`` runs the program (outputs of the per-module path, batch 1 and a batch);
    a new bias rebuilds it; bias None is the backbone bit for bit, per module."""
    net, mech, x = _demo()
    with torch.no_grad():
        mech.native_program = False
        ref = net(x)
        mech.native_program = True
        y = net(x)
        assert isinstance(mech._program, GraphProgram), mech.program_unsupported
        assert _close(y, ref)
        assert _close(net(x[:1]), ref[:1])
        first = mech._program
        net.set_knobs(bias=0.5)
        biased = net(x)
        assert mech._program is not first
        mech.native_program = False
        assert _close(biased, net(x))
        mech.native_program = True
        net.set_knobs(bias=None)
        assert torch.equal(net(x), net.detach()(x))


def test_the_dense_reference_is_the_static_program() -> None:
    net, _, x = _demo()
    dense = net.detach()
    run = net.dense_runner(dense, x[:1])
    assert run is not None
    with torch.no_grad():
        assert _close(run(x), dense(x))
