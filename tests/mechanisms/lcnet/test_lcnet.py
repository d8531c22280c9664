"""LC-Net and ConvNet-AIG: structure, real skipping, cost equal to what ran, training signals."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dyve.dynamic import equip
from dyve.dynamic.unit import SINGLE_CHECKS
from dyve.errors import DyveError
from dyve.mechanisms import ConvNetAIG, LCNet
from dyve.models import create
from dyve.testing.contract import graded_inputs
from dyve.testing.toy import toy_bottleneck_net

TOY_X = torch.zeros(1, 3, 16, 16)


def _r20() -> nn.Module:
    torch.manual_seed(0)
    return create("resnet20_cifar")


def test_plan_gates_the_branchs_second_to_last_conv_and_leaves_the_shortcut_alone() -> None:
    net = equip(_r20(), LCNet())
    p = net.mechanisms[0].plans[0]  # type: ignore[attr-defined]
    assert (p.gated.name, p.last.name, p.c_in, p.c_mid) == (
        "layer1.0.conv1",
        "layer1.0.conv2",
        16,
        16,
    )
    toy = equip(toy_bottleneck_net(), LCNet(), example_inputs=TOY_X)
    plans = toy.mechanisms[0].plans  # type: ignore[attr-defined]
    q = next(p for p in plans if p.block.shortcut)  # conv+BN downsample: not the branch
    assert q.gated.name.endswith("conv1")
    assert q.last.name.endswith("conv2")


def test_at_init_the_network_is_the_backbone() -> None:
    """Bit for bit on the per-block path; the native program folds batch norms (1e-5)."""
    backbone = _r20().eval()
    x = graded_inputs(32)
    net = equip(backbone, LCNet(eps=0.0))  # bias 1, weights 0: every scale is exactly 1
    with torch.no_grad():
        ref = backbone(x)
        native = net(x)
        net.mechanisms[0].native_program = False  # type: ignore[attr-defined]
        assert torch.equal(net(x), ref)
    assert torch.allclose(native, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))


def _active(eps: float = 0.0, native: bool = False) -> nn.Module:
    """R20 with predictors that skip; ``native``: ``net(x)`` may run the native program."""
    net = equip(_r20(), LCNet(init_bias=0.3, init_std=0.5, eps=eps))
    net.backend = "fast"
    net.mechanisms[0].native_program = native  # type: ignore[attr-defined]
    return net


def _addmv(bias_shape, mat_shape, vec_shape, *args, **kwargs) -> int:  # type: ignore[no-untyped-def]
    """FLOPs of ``addmv`` (batch-1 predictors), which FlopCounterMode does not know."""
    return 2 * mat_shape[0] * mat_shape[1]


def test_fast_batch1_executes_exactly_what_the_trace_charges() -> None:
    """FlopCounterMode counts the convs and linears that really ran (sliced, skipped)."""
    net = _active()
    x = graded_inputs(32)
    for i in range(len(x)):
        with FlopCounterMode(display=False, custom_mapping={torch.ops.aten.addmv: _addmv}) as fc:
            res = net.run(x[i : i + 1])
        assert fc.get_total_flops() == 2 * int(res.macs[0])
    assert (res.macs < net.static_macs).all()


def test_skipped_channels_and_blocks_are_not_computed() -> None:
    net = _active()
    widths, block_calls = [], []
    for u in net.units.values():
        tap = u.module.conv1
        tap.register_forward_hook(lambda m, i, o: widths.append(o.shape[1]))
        u.module.register_forward_pre_hook(lambda m, i: block_calls.append(1))
    x = graded_inputs(32)[3:4]
    res = net.run(x)
    ran = sum(int(s[0] == 0) for s in res.trace.units.values())
    assert len(block_calls) == ran < len(net.units)  # skipped blocks were not called
    assert min(widths) < 16  # some block computed fewer channels than it has


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_single_sample_path_is_the_generic_path_bit_for_bit(eps: float) -> None:
    """Untraced batch 1 takes the straight-line path (:mod:`dyve.mechanisms.lcnet.single`):
    the same logits as the traced generic path, and the same work (sliced and skipped)."""
    net = _active(eps)
    torch.manual_seed(1)  # past the first SINGLE_CHECKS samples only the single path runs
    x = torch.cat([graded_inputs(32), torch.randn(SINGLE_CHECKS, 3, 32, 32)])
    units = list(net.units.values())
    assert all(u._single for u in units)
    skipped = sliced = 0
    with torch.no_grad():
        for i in range(len(x)):
            one = x[i : i + 1]
            ref = net.run(one)
            assert torch.equal(net(one), ref.logits)
            skipped += sum(int(s[0] != 0) for s in ref.trace.units.values())
            slots = net.mechanisms[0].slots  # type: ignore[attr-defined]
            sliced += sum(int(slot.idx is not None) for slot in slots)
    assert skipped > 0, "the inputs should exercise skipped blocks"
    assert sliced > 0, "the inputs should exercise sliced channels"
    assert all(u._single and u._single_checked == SINGLE_CHECKS for u in units)
    for i in (3, len(x) - 1):
        with FlopCounterMode(display=False, custom_mapping={torch.ops.aten.addmv: _addmv}) as fc:
            out = net(x[i : i + 1])
        ref = net.run(x[i : i + 1])
        assert torch.equal(out, ref.logits)
        assert fc.get_total_flops() == 2 * int(ref.macs[0])


def test_training_mode_never_takes_the_single_sample_path() -> None:
    net = _active().train()
    unit = next(iter(net.units.values()))
    (gate,) = unit.gates.values()
    assert gate.forward_single(graded_inputs(32)[:1], unit) is None


def test_a_single_sample_path_that_differs_is_dropped_with_a_warning() -> None:
    net = _active()
    unit = next(iter(net.units.values()))
    (gate,) = unit.gates.values()
    gate.forward_single = lambda x, u: u._forward_batch(x) + 1  # type: ignore[method-assign]
    x = graded_inputs(32)[:1]
    want = net.run(x).logits
    with pytest.warns(RuntimeWarning, match="differs from the generic path"):
        got = net(x)
    assert torch.equal(got, want)
    assert not unit._single
    assert torch.equal(net(x), want)


def test_emulated_cost_counts_each_samples_own_channels_and_predictors() -> None:
    net = equip(_r20(), LCNet(init_bias=0.3, init_std=0.5, eps=0.0), backend="emulated")
    x = graded_inputs(32)
    res = net.run(x)
    mech = net.mechanisms[0]
    for p, slot in zip(mech.plans, mech.slots, strict=True):  # type: ignore[attr-defined]
        name = p.block.name
        macs = res.trace.detail[name]["macs"]
        ran = res.trace.units[name] == 0
        k = (slot.s_c > 0).sum(1).double()
        want = torch.where(ran, p.block.macs - p.gated_macs + p.gated_macs * k / p.c_mid, 0.0)
        want += p.c_in + ran.double() * p.c_in * p.c_mid  # L-Net always, C-Net when it runs
        assert torch.allclose(macs, want)


def test_regularizer_is_the_papers_sum_and_macs_weighting_keeps_its_total_at_init() -> None:
    net = equip(_r20(), LCNet(eps=0.0)).train()
    net(torch.randn(4, 3, 32, 32))
    mech = net.mechanisms[0]
    channels = sum(p.c_mid for p in mech.plans)  # type: ignore[attr-defined]
    plain = mech.regularizer(0.1, 0.01)  # type: ignore[attr-defined]
    assert plain.item() == pytest.approx(0.1 * 9 + 0.01 * channels)
    weighted = mech.regularizer(0.1, 0.01, "macs")  # type: ignore[attr-defined]
    assert weighted.item() == pytest.approx(plain.item(), rel=1e-5)
    weighted.backward()
    grads = [p.grad for p in net.trainable_parameters()]
    assert all(g is not None for g in grads)
    # a stage-1 channel saves 4x the MACs of a stage-3 channel: it is penalised 4x more
    b1 = mech.gates[0].c.bias.grad  # type: ignore[attr-defined]
    b3 = mech.gates[-1].c.bias.grad  # type: ignore[attr-defined]
    assert b1[0].item() == pytest.approx(4 * b3[0].item(), rel=1e-5)
    with pytest.raises(ValueError, match="weighting"):
        mech.regularizer(0.1, 0.1, "flops")  # type: ignore[attr-defined]


@pytest.mark.parametrize("closed", ["l", "c"])
def test_reopen_gives_closed_channels_a_gradient_and_changes_no_value(closed: str) -> None:
    """The first block's channels (or its L-Net) closed (bias -1, weights 0): with ReLU1
    the task loss leaves them without gradient for good; with ``reopen`` the channels get
    about the loss's derivative at scale 0+ (a finite difference), and the forward values
    stay the same. That takes the ``slice="in"`` tap's term: the ReLU after the scaled
    batch norm passes no gradient at an exact zero. Exact zeros elsewhere (ReLU outputs on
    the shortcut) make it an estimate, not the derivative itself. A closed block stays
    closed (its branch would be stale)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)

    def run(reopen: bool, bias: float) -> tuple[torch.Tensor, float, float]:
        net = equip(create("resnet20_cifar", pretrained=True), LCNet(eps=0.0))
        net = net.double().train()
        gate = net.mechanisms[0].gates[0]  # type: ignore[attr-defined]
        gate.reopen = reopen
        getattr(gate, closed).bias.data.fill_(bias)
        y = net(x)
        # the next conv used the unscaled map it needed, and no slot holds on to one
        assert all(s.unscaled is None for s in net.mechanisms[0].slots)  # type: ignore[attr-defined]
        loss = y.square().sum()
        loss.backward()
        return y.detach(), getattr(gate, closed).bias.grad.sum().item(), loss.item()

    y0, g0, _ = run(False, -1.0)
    y1, g1, at0 = run(True, -1.0)
    assert torch.equal(y0, y1)  # the same scales: exact zeros either way
    assert g0 == 0.0
    if closed == "l":
        assert g1 == 0.0
        return
    delta = 1e-6
    slope = (run(True, delta)[2] - at0) / delta  # the gate just open
    assert g1 == pytest.approx(slope, rel=0.1)
    assert abs(slope) > 1.0


def test_aig_gates_are_hard_and_pass_gradients_in_training() -> None:
    net = equip(_r20(), ConvNetAIG(threshold=0.5, open_bias=0.0)).train()
    torch.manual_seed(0)
    out = net(torch.randn(8, 3, 32, 32))
    mech = net.mechanisms[0]
    for g in mech.gates:  # type: ignore[attr-defined]
        assert set(g.last.detach().unique().tolist()) <= {0.0, 1.0}
    # the task loss alone reaches every gate through its hard 0/1 decision
    # (straight-through Gumbel): a gate cut from the graph would get no gradient
    out.sum().backward()
    for g in mech.gates:  # type: ignore[attr-defined]
        grads = [p.grad for p in g.parameters()]
        assert all(x is not None for x in grads)
        assert any(bool(x.abs().sum() > 0) for x in grads)


def test_aig_target_loss_is_the_rate_gap_and_pulls_rates_to_the_target() -> None:
    net = equip(_r20(), ConvNetAIG(threshold=0.5, open_bias=0.0)).train()
    torch.manual_seed(0)
    net(torch.randn(8, 3, 32, 32))
    mech = net.mechanisms[0]
    rates = torch.stack([g.last.detach().mean() for g in mech.gates])  # type: ignore[attr-defined]
    loss = mech.target_loss(0.25)  # type: ignore[attr-defined]
    assert loss.item() == pytest.approx(float(((rates - 0.25) ** 2).mean()), rel=1e-6)
    loss.backward()
    # every gate whose rate is off the target gets a gradient from it
    off = [g for g, r in zip(mech.gates, rates.tolist(), strict=True) if r != 0.25]  # type: ignore[attr-defined]
    assert off
    for g in off:
        grads = [p.grad for p in g.parameters() if p.grad is not None]
        assert any(bool(x.abs().sum() > 0) for x in grads)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="layer and/or channel"):
        LCNet(layer=False, channel=False)
    with pytest.raises(ValueError, match="predictor"):
        LCNet(predictor="tree")
    with pytest.raises(ValueError, match="eps"):
        LCNet(eps=-1.0)
    with pytest.raises(ValueError, match="threshold"):
        ConvNetAIG(threshold=2.0)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    plain(torch.zeros(1, 3, 8, 8))
    with pytest.raises(DyveError, match="no residual blocks"):
        equip(plain, LCNet(), example_inputs=torch.zeros(1, 3, 8, 8))


def test_global_predictor_refuses_rows_that_changed_between_blocks() -> None:
    net = equip(toy_bottleneck_net(), LCNet(predictor="global", eps=0.0), example_inputs=TOY_X)
    gate = net.mechanisms[0].gates[1]  # type: ignore[attr-defined]
    with pytest.raises(DyveError, match="early exits"):
        gate.decide(torch.zeros(3, gate.plan.c_in, 4, 4))


@pytest.mark.gpu
def test_training_step_and_both_backends_on_a_gpu() -> None:
    net = equip(_r20(), LCNet(init_bias=0.3, init_std=0.5, eps=0.0)).cuda()
    x = graded_inputs(32).cuda()
    net.train()
    mech = net.mechanisms[0]
    (net(x).sum() + mech.regularizer(0.1, 0.01)).backward()  # type: ignore[attr-defined]
    assert all(p.grad is not None for p in net.trainable_parameters())
    net.eval()
    fast = net.run(x)
    for i in range(len(x)):  # the single-sample path on the device
        assert torch.equal(net(x[i : i + 1]), net.run(x[i : i + 1]).logits)
    net.backend = "emulated"
    emu = net.run(x)
    assert torch.allclose(fast.logits, emu.logits, atol=1e-4)
    assert (fast.macs >= emu.macs).all()


def test_training_reduction_is_what_the_same_decisions_execute() -> None:
    net = equip(_r20(), LCNet(init_bias=0.3, init_std=0.5, eps=0.0), backend="emulated")
    x = graded_inputs(32)
    mech = net.mechanisms[0]
    net.eval()
    res = net.run(x)
    executed = net.static_macs - sum(p.block.macs for p in mech.plans)  # type: ignore[attr-defined]
    executed = executed + sum(  # each block's executed MACs without its predictors'
        res.trace.detail[p.block.name]["macs"]
        - (p.c_in + (res.trace.units[p.block.name] == 0).double() * p.c_in * p.c_mid)
        for p in mech.plans  # type: ignore[attr-defined]
    )
    assert 1.2 < net.static_macs / executed.mean().item() < 5  # some, not all, skipped
    # training mode with the backbone's BN in eval mode: the same features, so the same
    # decisions, now as scales that pass gradients
    net.train()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    net(x)
    got = mech.training_reduction(float(net.static_macs))  # type: ignore[attr-defined]
    assert got == pytest.approx(net.static_macs / executed.mean().item(), rel=1e-6)
