"""Where a gated residual block's scales are applied, and where its channels are really skipped.

A block gate (LC-Net's predictors, ConvNet-AIG's gate) decides per sample a *layer scale*
``s_L`` (multiplies the residual branch before the merge) and a *channel scale* ``s_C``
(multiplies the block's intermediate channels). It writes them into the block's
:class:`Slot` for the current call; :class:`Tap` wrappers, swapped in place of the branch's
modules, read the slot:

* the gated site's conv (``slice="out"``) and its batch norm (``slice="bn"``) compute only
  the channels in ``slot.idx`` (the fast back-end; None = all channels); the batch norm's
  output is multiplied by ``s_C``, which equals scaling after the ReLU because ReLU is
  positively homogeneous and ``s_C >= 0``;
* the next site's conv (``slice="in"``) reads only those input channels;
* the branch's last module (the next site's batch norm, or its conv) multiplies by ``s_L``.

With an empty slot every tap calls its module untouched, so a network whose gates are off
is the backbone bit for bit. The unit calls a block either on its whole batch or on the
rows where the gate said run (:mod:`dyve.dynamic.runtime`); :meth:`Slot.rows` picks the
scales of the rows a call holds.

``slot.reopen`` (training only, set by a gate whose closed scales pass a gradient) gives a
closed channel (``s_C = 0``) the gradient it would have at ``0+``: the ReLU after the
scaled batch norm passes none at an exact zero, so the ``slice="in"`` tap adds
``(s_C - s_C.detach()) * relu(y)`` for the closed channels, ``y`` being the unscaled batch
norm output. That term is 0 in the forward pass (values unchanged) and its gradient is
the one-sided derivative of ``relu(s_C * y)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Slot:
    """Per-call scales of one block, written by its gate and read by its taps."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Forget the last call (taps then run their modules untouched)."""
        self.s_l: torch.Tensor | None = None  # [N]
        self.s_c: torch.Tensor | None = None  # [N, C]
        self.reopen = False  # training: closed channels get their one-sided gradient
        self.unscaled: torch.Tensor | None = None  # what s_C multiplied (with reopen)
        self.run: torch.Tensor | None = None  # [N] bool, None = every row runs
        self.idx: torch.Tensor | None = None  # channels computed (fast back-end); None = all

    def rows(self, t: torch.Tensor, n: int) -> torch.Tensor:
        """The rows of ``t`` (full-batch scales) that a call on ``n`` rows holds."""
        if t.shape[0] == n:
            return t
        if self.run is None or int(self.run.sum()) != n:
            raise RuntimeError(f"a gated block was called on {n} rows of {t.shape[0]}")
        return t[self.run]


def _scale(y: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return y * s.view(*s.shape, *([1] * (y.dim() - s.dim())))


def _empty_conv(m: nn.Conv2d, x: torch.Tensor, channels: int) -> torch.Tensor:
    """What ``m`` outputs from zero input channels: ``channels`` maps of its bias (or 0)."""
    hw = [
        (x.shape[2 + i] + 2 * int(m.padding[i]) - m.dilation[i] * (m.kernel_size[i] - 1) - 1)
        // m.stride[i]
        + 1
        for i in range(2)
    ]
    out = x.new_zeros(x.shape[0], channels, *hw)
    if m.bias is not None and channels:
        out += m.bias.detach().view(1, -1, 1, 1)
    return out


class Tap(nn.Module):
    """A branch module of a gated block (see the module docstring)."""

    def __init__(
        self, module: nn.Module, slot: Slot, *, slice: str | None = None, scale: str | None = None
    ) -> None:
        super().__init__()
        if slice in ("out", "in") and not (isinstance(module, nn.Conv2d) and module.groups == 1):
            raise TypeError(f"only dense Conv2d layers can be sliced, got {type(module).__name__}")
        if slice == "bn" and not isinstance(module, nn.BatchNorm2d):
            raise TypeError(
                f"expected BatchNorm2d after the gated conv, got {type(module).__name__}"
            )
        self.module = module
        self.slot = slot
        self.slice = slice
        self.scale = scale
        self._cache: tuple[tuple[object, ...], list[torch.Tensor | None]] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slot = self.slot
        n = x.shape[0]
        if self.slice == "in" and slot.unscaled is not None:
            unscaled, slot.unscaled = slot.unscaled, None  # used once, then released
            if slot.s_c is not None:
                s = slot.rows(slot.s_c, n)
                closed = (s - s.detach()) * (s.detach() == 0)  # 0, with the gradient
                x = x + _scale(F.relu(unscaled), closed)
        idx = slot.idx if self.slice is not None and not self.training else None
        y: torch.Tensor = self.module(x) if idx is None else self._sliced(x, idx)
        if self.scale == "c" and slot.s_c is not None:
            s = slot.rows(slot.s_c, n)
            slot.unscaled = y.detach() if slot.reopen and self.training else None
            y = _scale(y, s if idx is None else s.index_select(1, idx))
        elif self.scale == "l" and slot.s_l is not None:
            y = _scale(y, slot.rows(slot.s_l, n))
        return y

    def _params(self, idx: torch.Tensor) -> list[torch.Tensor | None]:
        """The module's tensors restricted to ``idx`` (cached for the last channel set)."""
        m = self.module
        names = ("weight", "bias", "running_mean", "running_var")
        tensors = [getattr(m, k, None) for k in names]
        key = (idx.numel(), idx.tolist(), *(t._version for t in tensors if t is not None))
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        if self.slice == "in":  # input channels of the weight; bias belongs to the outputs
            w, b = tensors[0], tensors[1]
            assert w is not None
            out = [w.detach().index_select(1, idx), None if b is None else b.detach(), None, None]
        else:  # output channels: every per-channel tensor
            out = [None if t is None else t.detach().index_select(0, idx) for t in tensors]
        self._cache = (key, out)
        return out

    def _sliced(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        m = self.module
        w, b, mean, var = self._params(idx)
        if isinstance(m, nn.Conv2d):
            assert w is not None
            if idx.numel() == 0:  # no channel kept: no output channel / maps of the bias
                return _empty_conv(m, x, 0 if self.slice == "out" else m.out_channels)
            return F.conv2d(x, w, b, m.stride, m.padding, m.dilation)
        if idx.numel() == 0:
            return x
        assert isinstance(m, nn.BatchNorm2d)
        assert mean is not None
        assert var is not None
        return F.batch_norm(x, mean, var, w, b, False, 0.0, m.eps)

    def extra_repr(self) -> str:
        return f"slice={self.slice}, scale={self.scale}"
