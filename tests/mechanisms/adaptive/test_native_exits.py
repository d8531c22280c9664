"""Early exit on the native runtime: backbone, heads and policies as one program."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dyve.data import batches, load_sample
from dyve.demo import runs_dir
from dyve.dynamic import DynamicNet, load
from dyve.eval.latency import num_threads
from dyve.mechanisms import EarlyExit
from dyve.mechanisms.adaptive.native_exits import ExitProgram, split_at
from dyve.mechanisms.dyvedeep import native
from dyve.mechanisms.dyvedeep.lower import Unsupported
from dyve.models import create, model_info

pytestmark = pytest.mark.skipif(not native.available(), reason="the native kernels are unavailable")
RTOL = 1e-4


def _net(**knobs: object) -> tuple[DynamicNet, EarlyExit, torch.Tensor]:
    """The shipped early exit on ResNet-56 (its learned policy unless ``knobs`` say
    otherwise) and 48 sample images."""
    backbone = create("resnet56_cifar", pretrained=True)
    net = load(runs_dir() / "early_exit_resnet56", backbone=backbone)
    net.backend = "fast"
    if knobs:
        net.set_knobs(**knobs)
    mech = net.mechanism("early_exit")
    assert isinstance(mech, EarlyExit)
    x, _ = next(batches(load_sample(), 48, model_info(backbone).norm))
    return net, mech, x


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool((a - b).abs().max() <= RTOL * b.abs().max())


def _per_module(net: DynamicNet, mech: EarlyExit, x: torch.Tensor) -> torch.Tensor:
    mech.native_program = False
    try:
        with torch.no_grad():
            return net(x)
    finally:
        mech.native_program = True


def _program(mech: EarlyExit) -> ExitProgram:
    prog = mech._program
    assert isinstance(prog, ExitProgram), f"the native program ran ({mech.program_unsupported})"
    return prog


@pytest.mark.parametrize("threads", [1, 2])
def test_the_program_gives_the_per_module_outputs_and_exits(threads: int) -> None:
    """Batch 1 and a batch (samples split over threads, each on its own path) give the
    per-module outputs, and the program's own record of where each sample left is the
    traced run's."""
    net, mech, x = _net()
    ref = _per_module(net, mech, x)
    exits = net.run(x).trace.exit_at
    assert exits is not None
    assert {int(k) for k in exits.unique()} == {-1, 0, 1}, "samples must leave everywhere"
    with torch.no_grad(), num_threads(threads):
        batch = net(x)
        one = torch.cat([net(x[i : i + 1]) for i in range(len(x))])
        prog = _program(mech)
        logits, at = prog.run_exits(x)
    assert [r["kind"] for r in prog.ops].count("exit") == 2, "one program, both exits in it"
    assert _close(batch, ref)
    assert _close(one, ref)
    assert torch.equal(one.argmax(1), ref.argmax(1))
    assert torch.equal(at, exits)
    assert torch.equal(logits, batch)


def test_with_autograd_on_the_per_module_path_keeps_the_gradients() -> None:
    net, mech, x = _net()
    y = net(x[:4])  # no torch.no_grad: a training or attribution call
    assert y.requires_grad
    assert mech.fast_runner(net, x) is None


def test_no_exit_evaluating_is_the_backbone_bit_for_bit() -> None:
    net, mech, x = _net(policy="off")
    with torch.no_grad():
        assert torch.equal(net(x), net.detach()(x))
    assert mech.fast_runner(net, x) is None


def test_policies_and_forcing_are_read_at_each_call_and_weights_rebuild() -> None:
    """Knobs and forcing switch within one program (a stage table alternates them call by
    call), and each gives the per-module path's outputs; an in-place weight edit rebuilds."""
    net, mech, x = _net()
    with torch.no_grad():
        net(x[:1])
    first = _program(mech)
    settings = [
        {"policy": "max_prob", "threshold": 0.9},
        {"policy": "entropy", "threshold": 0.2},
        {"policy": "learned", "lam": mech.config.lams[-1]},
    ]
    for knobs in settings:
        net.set_knobs(**knobs)
        for leave in ("layer1", "layer2", None, "no"):
            mech.unforce() if leave == "no" else mech.force(leave)
            with torch.no_grad():
                y = net(x)
            assert _program(mech) is first, (knobs, leave)
            assert _close(y, _per_module(net, mech, x)), (knobs, leave)
    mech.unforce()
    with torch.no_grad():
        net.backbone.layer3[0].conv1.weight.mul_(0.5)  # after the last exit
        y = net(x)
    assert _program(mech) is not first
    assert _close(y, _per_module(net, mech, x))


def test_frozen_programs_take_their_weights_as_constants_but_see_new_policies() -> None:
    net, mech, x = _net()
    with torch.no_grad():
        y = net.freeze()(x)
        prog = _program(mech)
        assert prog.frozen
        assert _close(y, _per_module(net, mech, x))
        net.backbone.layer3[0].conv1.weight.mul_(0.5)  # not looked at while frozen
        assert torch.equal(net(x), y)
        assert mech._program is prog
        m = mech.modules["layer1"]
        m.store([m.classifier(i) for i in range(len(m.bias))])  # as a new fit replaces them
        assert not prog.valid(x)
        net(x)
        assert mech._program is not prog
        net.freeze(False)
        assert mech._program is None
        assert _close(net(x), _per_module(net, mech, x))


def test_the_dense_reference_is_one_checked_program() -> None:
    net, _, x = _net()
    dense = net.detach().eval()
    with torch.no_grad():  # as a bench times it
        run = net.dense_runner(dense, x[:1])
        assert run is not None
        assert _close(run(x), dense(x))


class _Skip(nn.Module):
    """A skip connection across module ``a``'s output."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 3, 3, padding=1)
        self.b = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x)) + x


def test_split_cuts_a_chain_and_refuses_a_skip_across_an_exit_point() -> None:
    chain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3)).eval()
    x = torch.randn(2, 3, 9, 9)
    first, second = split_at(chain, ["1"])
    with torch.no_grad():
        assert torch.equal(second(first(x)), chain(x))
    with pytest.raises(Unsupported, match="previous one's output alone"):
        split_at(_Skip(), ["a"])


def test_exits_inside_stages_cut_the_backbone_between_blocks() -> None:
    torch.manual_seed(0)  # the heads' initialisation
    backbone = create("resnet20_cifar", pretrained=True)
    net = DynamicNet(backbone, backend="fast")
    mech = EarlyExit(every=2, policy="max_prob", threshold=0.3)
    net.attach(mech)
    x, _ = next(batches(load_sample(), 32, model_info(backbone).norm))
    ref = _per_module(net, mech, x)
    exits = net.run(x).trace.exit_at
    assert exits is not None
    assert {-1, 0} <= {int(k) for k in exits.unique()}, "rows leave, and rows go on"
    with torch.no_grad():
        y = net(x)
        _, at = _program(mech).run_exits(x)
    assert [r["kind"] for r in _program(mech).ops].count("exit") == 4  # inside the stages
    assert _close(y, ref)
    assert torch.equal(at, exits)


def test_a_network_that_does_not_lower_is_tried_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import dyve.mechanisms.adaptive.early_exit as early_exit

    net, mech, x = _net()
    tried: list[int] = []

    def refuse(net: DynamicNet, points: list, x: torch.Tensor) -> ExitProgram:
        tried.append(len(points))
        raise Unsupported("not today")

    monkeypatch.setattr(early_exit, "ExitProgram", refuse)
    ref = _per_module(net, mech, x)
    with torch.no_grad():
        for _ in range(3):
            assert torch.equal(net(x), ref)
    assert tried == [2]
    assert mech.program_unsupported == "not today"


@pytest.mark.parametrize("features", ["softmax", "confidence", "both"])
def test_learned_policies_decide_natively_as_in_python(features: str) -> None:
    """Each feature kind's learned rule, in C++, takes the decisions the Python rule takes
    (rules fitted on the shipped heads' own outputs, so that they split the samples)."""
    from dyve.mechanisms.adaptive.graph import Outputs, PolicyGraph
    from dyve.mechanisms.adaptive.policy import fit_learned

    net, mech, x = _net()
    _, labels = next(batches(load_sample(), 48, model_info(net.backbone).norm))
    logits: dict[str, torch.Tensor] = {}
    hooks = [
        net.backbone.get_submodule(p).register_forward_hook(
            lambda m, a, out, p=p: logits.__setitem__(p, mech.modules[p].head(out))
        )
        for p in mech.modules
    ]
    with torch.no_grad():
        logits["final"] = net.detach()(x)
    for h in hooks:
        h.remove()
    graph = PolicyGraph.chain(["layer1", "layer2", "final"], [0.35, 0.35, 0.3])
    lams = (0.05, 0.2)
    for m in mech.modules.values():
        m.feature_kind = features
    mech.store_policies([fit_learned(graph, Outputs(logits, labels), lam, features=features)
                         for lam in lams])  # fmt: skip
    seen: set[int] = set()
    for lam in lams:
        net.set_knobs(policy="learned", lam=lam)
        exits = net.run(x).trace.exit_at
        assert exits is not None
        with torch.no_grad():
            y = net(x)
            _, at = _program(mech).run_exits(x)
        assert torch.equal(at, exits), lam
        assert _close(y, _per_module(net, mech, x)), lam
        seen |= {int(k) for k in at.unique()}
    assert seen == {-1, 0, 1}, "the rules must send samples everywhere"


def test_conv_heads_lower_into_the_program() -> None:
    """A conv head's layers are kernel sites of the program; its outputs are the per-module
    path's, and an in-place edit of a head's weights is seen."""
    backbone = create("resnet20_cifar", pretrained=True)
    net = DynamicNet(backbone, backend="fast")
    mech = EarlyExit(convs=-1, policy="entropy", threshold=-1.0)  # every head asked, none left
    net.attach(mech)
    net.eval()
    x, _ = next(batches(load_sample(), 8, model_info(backbone).norm))
    for leave in ("layer1", "layer2", None):
        mech.force(leave)
        ref = _per_module(net, mech, x)
        with torch.no_grad():
            got, one = net(x), net(x[:1])
        names = [r["name"] for r in _program(mech).ops if r["kind"] == "site"]
        assert {"heads.0.body.0", "heads.0.body.3", "heads.1.body.0"} <= set(names)
        assert _close(got, ref), leave
        assert _close(one, ref[:1]), leave
    mech.force("layer1")
    with torch.no_grad():
        before = net(x)
        mech.modules["layer1"].head.fc.bias.add_(1.0)
        after = net(x)
    assert _close(after, _per_module(net, mech, x))
    assert not _close(after, before), "the edited head ran"


def test_a_feature_kind_that_does_not_match_the_stored_policies_is_refused() -> None:
    net, mech, x = _net()
    with torch.no_grad():
        net(x[:1])
        mech.modules["layer1"].feature_kind = "softmax"  # the stored rules read "both"
        with pytest.raises(RuntimeError, match="the stored policies read"):
            net(x[:1])


@pytest.mark.parametrize("name", ["vgg16_bn_cifar_w025", "caffe_cifar10"])
def test_backbones_without_residual_blocks_run_as_one_program(name: str) -> None:
    """Stage exits on plain conv nets (pooling between stages) lower too."""
    torch.manual_seed(0)  # the heads' initialisation
    backbone = create(name, pretrained=True)
    net = DynamicNet(backbone, backend="fast")
    mech = EarlyExit(policy="max_prob", threshold=0.15)  # untrained heads: low confidences
    net.attach(mech)
    net.eval()
    x, _ = next(batches(load_sample(), 32, model_info(backbone).norm))
    ref = _per_module(net, mech, x)
    exits = net.run(x).trace.exit_at
    assert exits is not None
    with torch.no_grad():
        y = net(x)
        _, at = _program(mech).run_exits(x)
    assert _close(y, ref)
    assert torch.equal(at, exits)
    assert len(set(at.tolist())) >= 2, "samples leave at different exits"
