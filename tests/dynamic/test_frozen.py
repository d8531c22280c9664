"""Frozen native programs (:mod:`dyve.dynamic.frozen`): the weights taken as constants, and
what a frozen network still follows (knobs, training, loaded weights, dtype)."""

from __future__ import annotations

import pytest
import torch

from dyve import data, models
from dyve.dynamic import DynamicNet, equip
from dyve.mechanisms import LCNet
from dyve.mechanisms.dyvedeep import native

pytestmark = pytest.mark.skipif(not native.available(), reason="the native kernels are unavailable")


def _net() -> tuple[DynamicNet, LCNet, torch.Tensor]:
    """ResNet-20 with LC-Net gates that skip some blocks and channels (a native program), and
    four normalised sample images."""
    torch.manual_seed(0)
    net = equip(models.create("resnet20_cifar"), LCNet(init_bias=0.3, init_std=0.5, eps=0.0))
    net.eval().backend = "fast"
    mech = net.mechanisms[0]
    assert isinstance(mech, LCNet)
    x = models.CIFAR_NORM.apply(torch.from_numpy(data.load_sample().images[:4]))
    return net, mech, x


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool((a - b).abs().max() <= 1e-5 * b.abs().max())


@torch.no_grad()
def test_a_frozen_network_takes_its_weights_as_constants() -> None:
    net, mech, x = _net()
    checked = net(x)
    assert mech._program is not None
    assert not mech._program.frozen
    assert net.freeze() is net
    assert net.frozen
    assert mech._program is None, "freezing drops the kept program: rebuilt from the weights now"
    y = net(x)
    prog = mech._program
    assert prog is not None
    assert prog.frozen
    assert torch.equal(y, checked)
    net.backbone.conv1.weight.mul_(0.5)  # in place: a frozen program does not look
    assert torch.equal(net(x), y)
    assert mech._program is prog
    net.freeze(False)
    y = net(x)
    assert mech._program is not None
    assert not mech._program.frozen
    assert _close(y, net.run(x).logits), "unfrozen, the edited weights run"
    assert not torch.allclose(y, checked)


@torch.no_grad()
def test_a_frozen_network_still_follows_knobs_training_and_loaded_weights() -> None:
    net, mech, x = _net()
    net.freeze()
    net(x)
    first = mech._program
    net.set_knobs(eps=0.2)
    assert _close(net(x), net.run(x).logits)
    assert mech._program is not first
    assert mech._program is not None
    assert mech._program.frozen
    net.train()
    assert mech._program is None, "training drops the program of a frozen network"
    net.backbone.conv1.weight.mul_(0.5)  # as a training step would
    net.eval()
    before = net(x)
    assert _close(before, net.run(x).logits)
    state = {k: v * 1.5 if "linear" in k else v for k, v in net.state_dict().items()}
    net.load_state_dict(state)
    assert mech._program is None, "loaded weights drop the program"
    y = net(x)
    assert _close(y, net.run(x).logits)
    assert not _close(y, before)
    net.double()  # the network's dtype is still checked: the kept program is not run
    with pytest.raises(RuntimeError):  # PyTorch's answer to float32 inputs
        net(x)
    assert net.frozen, "freezing is kept until freeze(False)"


@torch.no_grad()
def test_the_dense_reference_of_a_frozen_network_is_frozen_alike() -> None:
    """A bench of a frozen network times the dense native reference without the check of
    its weights too (like for like)."""
    net, _, x = _net()
    dense = net.detach().eval()
    run = net.freeze().dense_runner(dense, x)
    assert run is not None
    y = run(x)
    assert _close(y, dense(x))
    next(dense.parameters()).mul_(2.0)  # unfrozen, the check raises (test_program.py)
    assert torch.equal(run(x), y)
