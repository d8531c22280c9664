"""Early exit on the native runtime: the backbone as programs between its exit points."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dyve.data import batches, load_sample
from dyve.demo import runs_dir
from dyve.dynamic import DynamicNet, load
from dyve.mechanisms import EarlyExit
from dyve.mechanisms.adaptive.native_exits import Segments, split_at
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


def test_segments_give_the_per_module_outputs_at_batch_1_and_batch_n() -> None:
    net, mech, x = _net()
    ref = _per_module(net, mech, x)
    exits = net.run(x).trace.exit_at
    assert exits is not None
    assert {int(k) for k in exits.unique()} == {-1, 0, 1}, "samples must leave everywhere"
    with torch.no_grad():
        batch = net(x)
        one = torch.cat([net(x[i : i + 1]) for i in range(len(x))])
    assert isinstance(mech._segments, Segments), "the native segments ran"
    assert len(mech._segments.programs) == 3
    assert _close(batch, ref)
    assert _close(one, ref)
    assert torch.equal(one.argmax(1), ref.argmax(1))


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


def test_segments_follow_knobs_and_are_rebuilt_on_weight_changes() -> None:
    net, mech, x = _net()
    with torch.no_grad():
        net(x[:1])
    first = mech._segments
    net.set_knobs(policy="max_prob", threshold=0.9)  # decided in PyTorch: same programs
    with torch.no_grad():
        y = net(x)
    assert mech._segments is first
    assert _close(y, _per_module(net, mech, x))
    with torch.no_grad():
        net.backbone.layer3[0].conv1.weight.mul_(0.5)  # in the last segment
        y = net(x)
    assert mech._segments is not first
    assert _close(y, _per_module(net, mech, x))


def test_frozen_segments_take_their_weights_as_constants() -> None:
    net, mech, x = _net()
    with torch.no_grad():
        y = net.freeze()(x)
        seg = mech._segments
        assert seg is not None
        assert all(p.frozen for p in seg.programs)
        assert _close(y, _per_module(net, mech, x))
        net.backbone.layer3[0].conv1.weight.mul_(0.5)  # not looked at while frozen
        assert torch.equal(net(x), y)
        assert mech._segments is seg
        net.freeze(False)
        assert mech._segments is None
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
    assert isinstance(mech._segments, Segments)
    assert len(mech._segments.programs) == 5  # four exits inside the stages
    assert _close(y, ref)


def test_exit_points_that_do_not_lower_are_tried_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import dyve.mechanisms.adaptive.early_exit as early_exit

    net, mech, x = _net()
    every = net._active_exits()
    tried: list[int] = []

    def lower_first_only(net: DynamicNet, points: list, x: torch.Tensor) -> Segments:
        tried.append(len(points))
        if len(points) > 1:
            raise Unsupported("not with both exits")
        return Segments(net, points, x)

    monkeypatch.setattr(early_exit, "Segments", lower_first_only)
    with torch.no_grad():
        for points in (every, every[:1], every, every[:1], every):
            monkeypatch.setattr(net, "_active_exits", lambda points=points: points)
            net(x[:2])
            refused = len(points) > 1
            assert (mech.fast_runner(net, x[:2]) is None) == refused
            assert mech.program_unsupported == ("not with both exits" if refused else None)
    # each set of exit points lowered once (the first set's programs are kept meanwhile),
    # the refused one is not tried again
    assert tried == [2, 1]


def test_conv_heads_run_as_programs_between_the_segments() -> None:
    """A conv head lowers to a program the segments call (only while they run); its outputs
    are the per-module path's, and an in-place edit of a head's weights is seen."""
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
        seg = mech._segments
        assert isinstance(seg, Segments), "the native segments ran"
        assert [ex for ex, _, _ in seg.heads] == list(mech.modules.values()), "heads lowered"
        assert all(m.program is None for m in mech.modules.values()), "set only while running"
        assert _close(got, ref), leave
        assert _close(one, ref[:1]), leave
    mech.force("layer1")
    with torch.no_grad():
        before = net(x)
        mech.modules["layer1"].head.fc.bias.add_(1.0)
        after = net(x)
    assert _close(after, _per_module(net, mech, x))
    assert not _close(after, before), "the edited head ran"
