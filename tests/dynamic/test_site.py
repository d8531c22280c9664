"""Site units: fused BN/ReLU tails, shared activations, folding, nesting, detaching."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dyve.dynamic import DynamicNet
from dyve.dynamic.site import SiteResult, SiteUnit, Tail
from dyve.errors import DyveError


class SharedReLU(nn.Module):
    """torchvision style: one ReLU module used after two convs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.conv2(x))
        return self.head(x.mean((2, 3)))


class Folded:
    """A site op that computes the fused output from the folded weights."""

    def active(self) -> bool:
        return True

    def compute(self, x: torch.Tensor, unit: SiteUnit) -> SiteResult:
        w, b = unit.folded()
        out = torch.nn.functional.conv2d(x, w, b, padding=1)
        out = torch.relu(out) if unit.relu else out
        n = x.shape[0]
        macs = torch.full((n,), float(unit.macs), dtype=torch.float64)
        return SiteResult(out, macs, 2 * macs, torch.zeros(n, dtype=torch.bool))


def _net() -> tuple[nn.Module, DynamicNet]:
    torch.manual_seed(0)
    model = SharedReLU().eval()
    with torch.no_grad():
        model.bn1.running_mean.uniform_(-0.5, 0.5)
        model.bn1.running_var.uniform_(0.5, 2.0)
    return model, DynamicNet(model, example_inputs=torch.zeros(1, 3, 8, 8))


def test_fused_sites_match_the_backbone_with_a_shared_relu() -> None:
    model, net = _net()
    for name in ("conv1", "conv2"):
        net.site_unit(name).op = Folded()
    assert isinstance(net.backbone.relu, Tail)
    # the fused conv1 passes the ReLU's first call through; its second call (after conv2,
    # whose activation discovery does not claim) must still apply the ReLU
    assert net.sites["conv1"].relu
    assert not net.sites["conv2"].relu
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(net(x), model(x), atol=1e-5)
    res = net.run(x)
    assert torch.all(res.macs == net.static_macs)
    assert set(res.trace.detail) == {"conv1", "conv2"}


def test_folded_weights_follow_weight_changes() -> None:
    _, net = _net()
    unit = net.site_unit("conv1")
    w1, _ = unit.folded()
    assert unit.folded()[0] is w1, "cached while nothing changes"
    with torch.no_grad():
        unit.tails["bn"].module.running_var.mul_(4.0)
    w2, _ = unit.folded()
    assert torch.allclose(w2, w1 / 2, atol=1e-6)


def test_detach_unwraps_sites_and_tails() -> None:
    model, net = _net()
    net.site_unit("conv1").op = Folded()
    dense = net.detach()
    assert not any(isinstance(m, SiteUnit | Tail) for m in dense.modules())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(dense(x), model(x))


def test_site_units_do_not_nest_in_gated_blocks() -> None:
    from dyve.models import create

    net = DynamicNet(create("resnet20_cifar"))
    net.site_unit("layer1.0.conv1")
    with pytest.raises(DyveError, match="nests"):
        net.unit("layer1.0")
    net2 = DynamicNet(create("resnet20_cifar"))
    net2.unit("layer1.1")
    with pytest.raises(DyveError, match="gated block"):
        net2.site_unit("layer1.1.conv2")
