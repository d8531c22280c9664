"""Taps: sliced convs and batch norms equal the full layer's kept channels; rows follow runs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dyve.dynamic.taps import Slot, Tap


def test_sliced_layers_equal_the_kept_channels_of_the_full_layers() -> None:
    conv1, bn = nn.Conv2d(6, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
    conv2 = nn.Conv2d(8, 5, 3, padding=1)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.eval()
    slot = Slot()
    t1, tb, t2 = (
        Tap(conv1, slot, slice="out"),
        Tap(bn, slot, slice="bn"),
        Tap(conv2, slot, slice="in"),
    )
    for m in (t1, tb, t2):
        m.eval()
    x = torch.randn(2, 6, 7, 7)
    idx = torch.tensor([1, 4, 6])
    with torch.no_grad():
        h = torch.relu(bn(conv1(x)))
        mask = torch.zeros(8)
        mask[idx] = 1
        full = conv2(h * mask.view(1, 8, 1, 1))
        slot.idx = idx
        hs = torch.relu(tb(t1(x)))
        assert hs.shape[1] == 3  # only the kept channels were computed
        assert torch.allclose(hs, h[:, idx], atol=1e-6)
        assert torch.allclose(t2(hs), full, atol=1e-5)
        slot.idx = torch.zeros(0, dtype=torch.long)  # nothing kept: conv2 sees zeros
        assert torch.allclose(t2(torch.relu(tb(t1(x)))), conv2(torch.zeros_like(h)), atol=1e-6)


def test_an_empty_slot_leaves_the_module_untouched() -> None:
    conv = nn.Conv2d(3, 4, 3)
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        assert torch.equal(Tap(conv, Slot(), slice="out", scale="c")(x), conv(x))


def test_scales_follow_the_rows_a_call_holds() -> None:
    slot = Slot()
    slot.s_l = torch.tensor([0.0, 0.5, 1.0])
    slot.run = torch.tensor([False, True, True])
    tap = Tap(nn.Identity(), slot, scale="l")
    ones = torch.ones(2, 1, 1, 1)  # the unit called the block on the two running rows
    assert tap(ones).flatten().tolist() == [0.5, 1.0]
    with pytest.raises(RuntimeError, match="called on 1 rows of 3"):
        tap(torch.ones(1, 1, 1, 1))


def test_only_dense_convs_can_be_sliced() -> None:
    with pytest.raises(TypeError, match="dense Conv2d"):
        Tap(nn.Conv2d(4, 4, 3, groups=2), Slot(), slice="out")
    with pytest.raises(TypeError, match="BatchNorm2d"):
        Tap(nn.Identity(), Slot(), slice="bn")
