"""The mechanism contract: one case list, one check per property, for every mechanism.

Shipped in the package (captum's pattern) so that a new mechanism's author runs the same
suite. ``tests/mechanisms/test_contract.py`` runs every check on every case and fails when
a registered mechanism has no case.

Properties checked:

1. identity: knobs off -> outputs ``torch.equal`` to the backbone's (eval mode) and
   per-sample cost == static cost (scalar ops == 2 x static MACs), in both back-ends;
2. no side effects: the user's model (parameters, buffers, hooks) and inputs are unchanged;
3. batch consistency: a batch gives the same decisions and outputs as its samples one by one
   (and the same cost, or no less in a fast back-end whose cost is not exact);
4. monotonic knob: a more permissive knob value never raises the mean cost on a fixed batch;
5. round trip: save -> load gives the same outputs and the same description;
6. hook hygiene: no hooks remain after discovery, runs, or a forward that raised;
7. back-ends agree: emulated and fast give the same decisions, the same per-sample cost
   and outputs equal up to float rounding (sub-batches change accumulation order);
8. trainable surface: the mechanism's trainable parameters are not the backbone's.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from dyve.dynamic import describe, equip, load, save
from dyve.dynamic.net import DynamicNet
from dyve.mechanisms.base import Mechanism

ATOL = 1e-4  # outputs of different batch compositions agree to this (float32 rounding)


@dataclass(frozen=True)
class ContractCase:
    """One mechanism on one backbone with inputs and knob values that exercise it."""

    id: str
    mechanism: str
    make_backbone: Callable[[], nn.Module]
    make_mechanism: Callable[[], Mechanism]
    make_inputs: Callable[[], torch.Tensor]
    #: values of ``knob`` from least to most permissive (cheapest last)
    knob: str
    permissive: tuple[Any, ...]
    #: knob values under which decisions differ between samples of ``make_inputs()``
    active: dict[str, Any] = field(default_factory=dict)


def _resnet20() -> nn.Module:
    from dyve.models import create

    torch.manual_seed(0)
    return create("resnet20_cifar")


def graded_inputs(size: int, seed: int = 0, top: float = 1.5) -> torch.Tensor:
    """8 random images whose overall scale grows, so activation-based gates split them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 3, size, size, generator=g)
    return x * torch.linspace(0.05, top, 8).view(8, 1, 1, 1)


def _toy() -> nn.Module:
    from dyve.testing.toy import toy_bottleneck_net

    return toy_bottleneck_net()


def _caffe_trained() -> nn.Module:
    from dyve.models import create

    # shipped weights: with random ones the lossless SPET check almost never fires
    return create("caffe_cifar10", pretrained=True)


def _block_skip() -> Mechanism:
    from dyve.mechanisms import BlockSkip

    return BlockSkip()


def _dyvedeep() -> Mechanism:
    from dyve.mechanisms import DyVEDeep

    return DyVEDeep()


def _early_exit() -> Mechanism:
    from dyve.mechanisms import EarlyExit

    return EarlyExit(policy="max_prob")


def _lcnet(**kw: Any) -> Mechanism:
    from dyve.mechanisms import LCNet

    # random predictors whose scales straddle 0 and 1 on graded inputs
    return LCNet(init_bias=0.3, init_std=0.5, **kw)


def _aig(skipnet: bool = False) -> Mechanism:
    from dyve.mechanisms import ConvNetAIG, SkipNetStyle

    torch.manual_seed(0)
    return (SkipNetStyle if skipnet else ConvNetAIG)(open_bias=0.0)


def _d2nn_graph(name: str) -> nn.Module:
    from dyve.models import create

    torch.manual_seed(0)
    graph = create(name)
    with torch.no_grad():  # sharper random controllers, so decisions differ between inputs
        for ctrl in cast(nn.ModuleDict, graph.controllers).values():
            layers = cast(nn.Sequential, ctrl)
            cast(nn.Linear, layers[-1]).weight.mul_(30.0)
            cast(nn.Linear, layers[-3]).weight.mul_(3.0)
    return graph


def _d2nn() -> Mechanism:
    from dyve.mechanisms import D2NN

    return D2NN()


CASES: list[ContractCase] = [
    ContractCase(
        # a controller picks the low- or the high-capacity branch; the output sums both
        id="d2nn-highlow",
        mechanism="d2nn",
        make_backbone=partial(_d2nn_graph, "d2nn_highlow_cifar"),
        make_mechanism=_d2nn,
        make_inputs=partial(graded_inputs, 32),
        knob="bias",
        permissive=(-1.0, 0.0, 2.0, 5.0, 20.0),
        active={"bias": 5.0},
    ),
    ContractCase(
        # nested controllers on head scores (the second runs only after "go"), dummy nodes,
        # last-head output
        id="d2nn-cascade",
        mechanism="d2nn",
        make_backbone=partial(_d2nn_graph, "d2nn_cascade_cifar"),
        make_mechanism=_d2nn,
        make_inputs=partial(graded_inputs, 32),
        knob="bias",
        permissive=(-5.0, -3.85, -3.0, 0.0, 10.0),
        active={"bias": -3.41},  # between two samples' switching points (-3.51, -3.31)
    ),
    ContractCase(
        # per-block L-Net and C-Net; the fast back-end slices the kept channels
        id="lcnet-resnet20",
        mechanism="lcnet",
        make_backbone=_resnet20,
        make_mechanism=_lcnet,
        make_inputs=partial(graded_inputs, 32),
        knob="eps",
        permissive=(None, 0.0, 0.1, 0.3, 0.6, 1.0),
        active={"eps": 0.0},
    ),
    ContractCase(
        # one global predictor; bottlenecks (gate after the middle conv), projection shortcuts
        id="lcnet_global-toy_bottleneck",
        mechanism="lcnet",
        make_backbone=_toy,
        make_mechanism=partial(_lcnet, predictor="global"),
        make_inputs=partial(graded_inputs, 16, 1, 2.0),
        knob="eps",
        permissive=(None, 0.0, 0.1, 0.3, 0.6, 1.0),
        active={"eps": 0.0},
    ),
    ContractCase(
        id="aig-resnet20",
        mechanism="aig",
        make_backbone=_resnet20,
        make_mechanism=_aig,
        make_inputs=partial(graded_inputs, 32),
        knob="threshold",
        permissive=(None, 0.3, 0.45, 0.5, 0.55, 0.7, 1.0),
        active={"threshold": 0.5},
    ),
    ContractCase(
        # AIG's gate trained as a policy: the same decisions at test
        id="skipnet-resnet20",
        mechanism="skipnet",
        make_backbone=_resnet20,
        make_mechanism=partial(_aig, skipnet=True),
        make_inputs=partial(graded_inputs, 32),
        knob="threshold",
        permissive=(None, 0.3, 0.45, 0.5, 0.55, 0.7, 1.0),
        active={"threshold": 0.5},
    ),
    ContractCase(
        # untrained heads after stages 1 and 2; leavers are dropped from the batch
        id="early_exit-resnet20",
        mechanism="early_exit",
        make_backbone=_resnet20,
        make_mechanism=_early_exit,
        make_inputs=partial(graded_inputs, 32),
        knob="threshold",
        permissive=(math.inf, 0.5, 0.3, 0.2, 0.1, 0.0),
        active={"threshold": 0.2},
    ),
    ContractCase(
        id="block_skip-resnet20",
        mechanism="block_skip",
        make_backbone=_resnet20,
        make_mechanism=_block_skip,
        make_inputs=partial(graded_inputs, 32),
        knob="threshold",
        permissive=(0.0, 0.2, 0.5, 1.0, 2.0, 5.0),
        active={"threshold": 0.5},
    ),
    ContractCase(
        # conv+BN downsample shortcuts that cost MACs, in-place merge, ReLU after the merge
        id="block_skip-toy_bottleneck",
        mechanism="block_skip",
        make_backbone=_toy,
        make_mechanism=_block_skip,
        make_inputs=partial(graded_inputs, 16, 1, 2.0),
        knob="threshold",
        permissive=(0.0, 0.1, 0.3, 0.6, 1.0, 3.0),
        active={"threshold": 0.3},
    ),
    ContractCase(
        id="dyvedeep_spet-resnet20",
        mechanism="dyvedeep",
        make_backbone=_resnet20,
        make_mechanism=_dyvedeep,
        make_inputs=partial(graded_inputs, 32),
        knob="spet",
        permissive=(None, -1.0, -0.3, 0.0, 0.3, 1.0),
        active={"spet": 0.0},
    ),
    ContractCase(
        # no batch norm, linear layers followed by ReLU, pooling between sites
        id="dyvedeep_spet_exact-caffe",
        mechanism="dyvedeep",
        make_backbone=_caffe_trained,
        make_mechanism=_dyvedeep,
        make_inputs=partial(graded_inputs, 32),
        knob="spet_exact",
        permissive=(False, True),
        active={"spet_exact": True},
    ),
    ContractCase(
        id="dyvedeep_sdss-toy_bottleneck",
        mechanism="dyvedeep",
        make_backbone=_toy,
        make_mechanism=_dyvedeep,
        make_inputs=partial(graded_inputs, 16, 1, 2.0),
        knob="sdss",
        permissive=(None, 0.0, 0.05, 0.2, 1.0, 5.0),
        active={"sdss": 0.2},
    ),
    ContractCase(
        id="dyvedeep_sfma-resnet20",
        mechanism="dyvedeep",
        make_backbone=_resnet20,
        make_mechanism=_dyvedeep,
        make_inputs=partial(graded_inputs, 32),
        knob="sfma",
        permissive=(None, 0.0, 0.01, 0.1, 1.0, 10.0),
        active={"sfma": 0.1},
    ),
]

CHECKS: dict[str, Callable[[ContractCase, Path], None]] = {}


def _check(fn: Callable[[ContractCase, Path], None]) -> Callable[[ContractCase, Path], None]:
    CHECKS[fn.__name__.removeprefix("check_")] = fn
    return fn


def _equip(
    case: ContractCase, backbone: nn.Module | None = None, backend: str = "fast"
) -> DynamicNet:
    bb = backbone if backbone is not None else case.make_backbone()
    return equip(
        bb.eval(), case.make_mechanism(), example_inputs=case.make_inputs()[:1], backend=backend
    )


def _off(net: DynamicNet) -> None:
    for m in net.mechanisms:
        for k, v in m.off_knobs().items():
            m.set_knob(k, v)


def _move(params: Iterable[nn.Parameter], scale: float) -> None:
    """Add seeded Gaussian noise of std ``scale`` to each parameter, in place."""
    noise = torch.Generator().manual_seed(12345)
    with torch.no_grad():
        for p in params:
            p.add_(scale * torch.randn(p.shape, generator=noise).to(p))


def _hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


@_check
def check_identity(case: ContractCase, tmp: Path) -> None:
    backbone = case.make_backbone().eval()
    x = case.make_inputs()
    with torch.no_grad():
        ref = backbone(x)
    for backend in ("fast", "emulated"):
        net = _equip(case, backbone, backend)
        _off(net)
        with torch.no_grad():
            out = net(x)
        assert torch.equal(out, ref), f"{backend}: knobs off must reproduce the backbone exactly"
        res = net.run(x)
        assert torch.equal(res.logits, ref), f"{backend}: run() with knobs off differs"
        static = float(net.static_macs)
        assert torch.all(res.macs == static), (
            f"{backend}: cost {res.macs.tolist()} != static {static}"
        )
        assert torch.all(res.trace.cost.scalar_ops == 2 * static), (
            f"{backend}: scalar ops with knobs off must be 2 x the static MACs"
        )


@_check
def check_no_side_effects(case: ContractCase, tmp: Path) -> None:
    backbone = case.make_backbone().eval()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    hooks = _hooks(backbone)
    modules = [type(m) for m in backbone.modules()]
    x = case.make_inputs()
    x_before = x.clone()
    net = _equip(case, backbone)
    net.set_knobs(**case.active)
    net.run(x)
    net(x)
    after = backbone.state_dict()
    assert before.keys() == after.keys(), "equipping changed the user's model's state keys"
    assert all(torch.equal(before[k], after[k]) for k in before), "user's model tensors changed"
    assert _hooks(backbone) == hooks, "hooks were added to the user's model"
    assert [type(m) for m in backbone.modules()] == modules, "the user's modules were replaced"
    assert torch.equal(x, x_before), "the input tensor was modified"


@_check
def check_batch_consistency(case: ContractCase, tmp: Path) -> None:
    x = case.make_inputs()
    for backend in ("fast", "emulated"):
        net = _equip(case, backend=backend)
        net.set_knobs(**case.active)
        full = net.run(x)
        for i in range(len(x)):
            one = net.run(x[i : i + 1])
            for unit, status in full.trace.units.items():
                assert one.trace.units[unit][0] == status[i], (
                    f"{backend}: {unit} decided differently alone (sample {i})"
                )
            assert torch.allclose(one.logits[0], full.logits[i], atol=ATOL), (
                f"{backend}: sample {i} output differs alone"
            )
            if backend == "fast" and not all(m.batch_cost_exact for m in net.mechanisms):
                # a batch may execute more per sample (LC-Net: the union of kept channels)
                assert one.macs[0] <= full.macs[i], f"fast: sample {i} costs more alone"
            else:
                assert one.macs[0] == full.macs[i], f"{backend}: sample {i} cost differs alone"
    # data-dependent decisions show as unit statuses or (neuron-level knobs) costs that differ
    mixed = [bool((s != s[0]).any()) for s in full.trace.units.values()]
    mixed.append(bool((full.macs != full.macs[0]).any()))
    assert any(mixed), "the case's active knobs should give different decisions across samples"


def _fast_ignores(case: ContractCase, net: DynamicNet) -> bool:
    """True when the fast back-end does not apply the case's knob (``fast_ignores``)."""
    return any(case.knob.split(".")[-1] in m.fast_ignores for m in net.mechanisms)


@_check
def check_monotonic_knob(case: ContractCase, tmp: Path) -> None:
    net = _equip(case)
    if _fast_ignores(case, net):  # its saving shows where it is applied
        net.backend = "emulated"
    x = case.make_inputs()
    costs = []
    for value in case.permissive:
        net.set_knobs(**{case.knob: value})
        costs.append(float(net.run(x).macs.mean()))
    assert all(a >= b for a, b in itertools.pairwise(costs)), f"mean cost rose: {costs}"
    assert costs[-1] < costs[0], f"the most permissive value saved nothing: {costs}"


@_check
def check_round_trip(case: ContractCase, tmp: Path) -> None:
    net = _equip(case)
    net.set_knobs(**case.active)
    # move what the mechanism added off its seeded initial values: a rebuilt mechanism
    # draws those again, so only a save/load that keeps them passes
    _move({id(p): p for p in (*net.gate_parameters(), *net.trainable_parameters())}.values(), 0.01)
    save(net, tmp / "saved")
    again = load(tmp / "saved", backbone=case.make_backbone())
    want, got = net.state_dict(), again.state_dict()
    assert want.keys() == got.keys(), "the saved network's tensors changed after save/load"
    changed = [k for k in want if not torch.equal(want[k], got[k])]
    assert not changed, f"tensors differ after save/load: {changed[:5]}"
    x = case.make_inputs()
    with torch.no_grad():
        assert torch.equal(net(x), again(x)), "outputs differ after save/load"
    assert describe(again) == describe(net), "the description changed after save/load"


@_check
def check_hook_hygiene(case: ContractCase, tmp: Path) -> None:
    net = _equip(case)
    net.set_knobs(**case.active)
    x = case.make_inputs()
    net.run(x)
    assert _hooks(net) == 0, "hooks left on the dynamic network after run()"
    bad = torch.zeros(1, x.shape[1] + 1, *x.shape[2:])
    try:
        net(bad)
    except RuntimeError:
        pass
    else:
        raise AssertionError("a forward on inputs of the wrong channel count should raise")
    assert _hooks(net) == 0, "hooks left after a forward that raised"
    from dyve.graph import discover

    bb = case.make_backbone()
    with contextlib.suppress(RuntimeError):
        discover(bb, bad)
    assert _hooks(bb) == 0, "discover() left hooks after a pass that raised"


@_check
def check_backends_agree(case: ContractCase, tmp: Path) -> None:
    x = case.make_inputs()
    fast = _equip(case, backend="fast")
    emu = copy.deepcopy(fast)
    emu.backend = "emulated"
    for value in case.permissive:
        fast.set_knobs(**{case.knob: value})
        emu.set_knobs(**{case.knob: value})
        a, b = fast.run(x), emu.run(x)
        assert a.trace.units.keys() == b.trace.units.keys()
        ignored = _fast_ignores(case, fast)  # lossless there: changes costs, never outputs
        for unit in a.trace.units:
            assert ignored or torch.equal(a.trace.units[unit], b.trace.units[unit]), (
                f"{unit}: decisions differ at {value}"
            )
        if all(m.fast_cost_exact for m in fast.mechanisms):
            assert torch.equal(a.macs, b.macs), f"per-sample cost differs at {value}"
        else:  # executing may cost extra work the emulation does not count, never less
            assert (a.macs >= b.macs).all(), f"executed cost below simulated at {value}"
        assert torch.allclose(a.logits, b.logits, atol=ATOL), f"outputs differ at {value}"
        # the fast back-end's cost is executed only where every mechanism really skips
        skips = all(m.executes_fast for m in fast.mechanisms)
        assert a.trace.cost.cost_mode == ("executed" if skips else "simulated")
        assert b.trace.cost.cost_mode == "simulated"


@_check
def check_trainable_surface(case: ContractCase, tmp: Path) -> None:
    """What a trainer optimises is what the mechanism added, and nothing of the backbone:
    every parameter the mechanism added is in it (counted against the bare backbone), each
    once and reachable from the network (so it is saved), and moving all of it leaves the
    knobs-off network equal to the backbone (a backbone weight among them would not)."""
    backbone = case.make_backbone().eval()
    x = case.make_inputs()
    with torch.no_grad():
        ref = backbone(x)
    net = _equip(case, copy.deepcopy(backbone))
    trainable = list(net.trainable_parameters())
    ids = [id(p) for p in trainable]
    assert len(ids) == len(set(ids)), "a trainable parameter is listed twice"
    assert set(ids) <= {id(p) for p in net.parameters()}, "a trainable parameter is not saved"
    added = sum(p.numel() for p in net.parameters()) - sum(p.numel() for p in backbone.parameters())
    assert sum(p.numel() for p in trainable) >= added, "added parameters left out of training"
    _move(trainable, 1.0)
    _off(net)
    with torch.no_grad():
        assert torch.equal(net(x), ref), "moving the trainable parameters changed the backbone"
