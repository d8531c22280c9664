"""Discovery on every zoo model and on models defined only here."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dyve import models
from dyve.graph import discover, fold_bn, tuned_eager
from dyve.testing.toy import Bottleneck

EXPECTED_BLOCKS = {
    "resnet20_cifar": 9,
    "resnet32_cifar": 15,
    "resnet44_cifar": 21,
    "resnet56_cifar": 27,
}


@pytest.mark.parametrize("name", models.list_models())
def test_zoo_models(name: str) -> None:
    net = models.create(name)
    g = discover(net)
    convs = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    if models.model_info(net).family == "d2nn":  # the static path runs, controllers do not
        on = net.path(net.static_choice())  # type: ignore[operator]
        convs = [n for n in convs if n.startswith("nodes.") and n.split(".")[1] in on]
    assert [s.name for s in g.sites] == convs  # every conv/linear that runs, in order
    assert sum(s.macs for s in g.sites) == g.total_macs
    assert [s.name for s in g.stages] == list(models.model_info(net).stages)
    assert set(g.exit_points) >= {s.name for s in g.stages}
    if name in EXPECTED_BLOCKS:
        assert len(g.blocks) == EXPECTED_BLOCKS[name]
        assert sum(b.downsamples for b in g.blocks) == 2
        for b in g.blocks:
            assert b.stage == b.name.split(".")[0]
            assert (b.shortcut is not None) == b.downsamples
        assert all(s.bn for s in g.sites if s.kind == "conv")
    if name.startswith("vgg"):
        assert g.blocks == ()
        assert all(s.bn and s.act for s in g.sites if s.kind == "conv")


class DictNet(nn.Module):
    """A model with an unusual forward signature: keyword inputs and a dict output."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(Bottleneck(8, 8, 1), Bottleneck(8, 16, 2), Bottleneck(16, 16, 1))
        self.head = nn.Linear(16, 4)

    def forward(self, image: torch.Tensor, scale: float = 1.0) -> dict[str, torch.Tensor]:
        y = self.body(self.stem(image * scale))
        return {"logits": self.head(y.mean((2, 3)))}


def test_model_defined_in_the_test_with_keyword_inputs() -> None:
    net = DictNet()
    g = discover(net, {"image": torch.randn(2, 3, 16, 16), "scale": 0.5})
    assert [b.name for b in g.blocks] == ["body.0", "body.1", "body.2"]
    b0, b1, _ = g.blocks
    assert b0.shortcut is None
    assert not b0.downsamples
    assert b1.shortcut == "body.1.downsample"
    assert b1.downsamples
    assert b1.out_shape == (16, 8, 8)
    assert [s.name for s in g.stages] == ["body"]
    site = g.site("body.1.conv1")
    assert site.bn == "body.1.bn1"
    assert site.act == "body.1.relu"
    assert site.block == "body.1"
    # conv 1x1 8->8 on 16x16: 8*16*16*8 = 16,384 MACs
    assert g.site("body.1.downsample.0").macs == 16 * 8 * 8 * 8
    assert g.site("head").kind == "linear"
    assert "block body.1" in str(g)


def test_discover_needs_inputs_for_foreign_models() -> None:
    with pytest.raises(ValueError, match="example_inputs"):
        discover(DictNet())


def test_hooks_removed_when_the_pass_raises() -> None:
    net = DictNet()
    with pytest.raises(RuntimeError):
        discover(net, {"image": torch.randn(1, 4, 16, 16)})
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    assert net.training, "discover must restore the training flag"


def test_fold_bn_matches_and_leaves_the_original() -> None:
    net = models.create("resnet20_cifar")
    # give BN non-trivial statistics
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(16, 3, 32, 32))
    net.eval()
    g = discover(net)
    folded = fold_bn(net, g)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(folded(x), net(x), atol=1e-4, rtol=1e-4)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == 0
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 19


def test_tuned_eager_is_the_network_folded_in_channels_last() -> None:
    """The eager baseline benches quote: BN folded, channels_last, same outputs."""
    net = models.create("resnet20_cifar", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    tuned, about = tuned_eager(net, x[:1])
    assert about == {"memory_format": "channels_last", "bn_folded": True}
    assert not any(isinstance(m, nn.BatchNorm2d) for m in tuned.modules())
    assert tuned.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not net.conv1.weight.is_contiguous(memory_format=torch.channels_last), "a copy"
    with torch.no_grad():
        out = tuned(x.contiguous(memory_format=torch.channels_last))
        assert torch.allclose(out, net(x), atol=1e-4, rtol=1e-4)


def test_tuned_eager_of_a_model_discovery_cannot_trace_keeps_its_bn() -> None:
    """Without discovery nothing is folded, and the description says so."""
    net = DictNet().eval()
    tuned, about = tuned_eager(net, torch.randn(1, 4, 16, 16))
    assert about == {"memory_format": "channels_last", "bn_folded": False}
    assert tuned is not net
