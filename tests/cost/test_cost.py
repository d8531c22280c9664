"""Cost counting: analytic goldens, FlopCounterMode oracle, hook hygiene, per-sample sums."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dyve import models
from dyve.cost import CONVENTION, CostAccumulator, CostCounter, static_cost


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(8 * 4 * 4, 5)
        self.unused = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(self.relu(self.bn(self.conv(x))))
        y = self.dw(y) + y
        return self.fc(self.flat(y))


def test_analytic_golden_counts() -> None:
    t = static_cost(Tiny(), input_shape=(3, 8, 8))
    rows = {r.name: r for r in t.rows}
    # conv: 8 out ch x 8x8 positions x (3 in ch x 3x3) = 8*64*27 = 13,824
    assert rows["conv"].macs == 13_824
    # depthwise: 8 ch x 4x4 positions x (1 in ch per group x 3x3) = 8*16*9 = 1,152
    assert rows["dw"].macs == 1_152
    # fc: 128 inputs x 5 outputs = 640
    assert rows["fc"].macs == 640
    assert t.total_macs == 13_824 + 1_152 + 640
    # other ops: bn 512 + relu 512 + maxpool 8*4*4 outputs x 2x2 window 512 + dw bias add
    # (inside conv, not counted) + residual add 128 (attributed to the model) + fc bias 5
    assert rows["bn"].other == 512
    assert rows["relu"].other == 512
    assert rows["pool"].other == 512
    assert t.total_other == 512 * 3 + 128 + 5


def test_batch_costs_are_per_sample() -> None:
    one = static_cost(Tiny(), example_inputs=torch.randn(1, 3, 8, 8))
    four = static_cost(Tiny(), example_inputs=torch.randn(4, 3, 8, 8))
    assert one.total_macs == four.total_macs
    assert one.total_other == four.total_other


@pytest.mark.parametrize("name", models.list_models())
def test_static_macs_equal_flop_counter_half(name: str) -> None:
    """Oracle: dyve's static MACs == torch.utils.flop_counter FLOPs / 2 for every zoo model."""
    net = models.create(name)
    ours = static_cost(net).total_macs
    fc = FlopCounterMode(display=False)
    with fc, torch.no_grad():
        net(torch.zeros(1, *models.model_info(net).input_size))
    assert ours == fc.get_total_flops() // 2
    assert fc.get_total_flops() % 2 == 0


def test_by_module_uncalled_and_unsupported() -> None:
    net = Tiny()
    x = torch.randn(1, 3, 8, 8)
    with CostCounter(net) as cc:
        net(x)
    assert cc.by_module()["conv"] == 13_824
    assert "unused" in cc.uncalled_modules()
    assert cc.unsupported_ops() == {}
    v = torch.randn(3)
    with CostCounter() as cc2:
        v.cumsum(0)
    assert "aten.cumsum" in cc2.unsupported_ops()


def _hook_count(m: nn.Module) -> int:
    return sum(len(x._forward_hooks) + len(x._forward_pre_hooks) for x in m.modules())


def test_hooks_removed_even_when_forward_raises() -> None:
    net = Tiny()
    with pytest.raises(RuntimeError), CostCounter(net):
        net(torch.randn(1, 4, 8, 8))  # wrong channel count
    assert _hook_count(net) == 0
    with CostCounter(net):
        net(torch.randn(1, 3, 8, 8))
    assert _hook_count(net) == 0


def test_table_states_convention() -> None:
    text = static_cost(models.create("resnet20_cifar")).format()
    assert CONVENTION in text
    assert "layer3.2.conv2" in text
    # ResNet-20: 19 3x3 convs + linear; the well-known ~41 M MACs
    assert "40,551,040" in text


def test_accumulator_masks_indices_and_values() -> None:
    acc = CostAccumulator(4, "executed")
    acc.add(100)
    acc.add(50, torch.tensor([True, False, True, False]))
    acc.add(torch.tensor([1.0, 2.0]), torch.tensor([1, 3]))
    assert acc.per_sample.tolist() == [150.0, 101.0, 150.0, 102.0]
    s = acc.summary()
    assert s["cost_mode"] == "executed"
    assert s["macs_mean"] == pytest.approx(125.75)
    other = CostAccumulator(1, "simulated")
    other.add(7)
    acc.extend(other)
    assert len(acc) == 5
    assert acc.cost_mode == "simulated"  # mixing in simulated cost marks the whole as simulated


def test_accumulator_rejects_bad_mode() -> None:
    with pytest.raises(ValueError, match="cost_mode"):
        CostAccumulator(2, "measured")  # type: ignore[arg-type]
