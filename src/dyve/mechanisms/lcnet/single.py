"""One sample through an LC-Net block in the fast back-end, without the per-module plumbing.

At batch 1 the generic path (the unit asks its gate, the block runs through its
:class:`~dyve.dynamic.taps.Tap` wrappers, each reading the block's slot) spends more time
in Python and small ATen calls than in the block's two convolutions (profile in
``benchmarks/NOTES.md``). :class:`SingleSample` runs the same operations, in the same order
and on the same sliced tensors, as straight-line code: the predictors' outputs come back as
Python floats in one sync, the kept channels are a tuple, and the sliced weights are cached
per channel pattern. Its outputs are bit-for-bit those of the generic path; the unit checks
that on the first calls of every block (:meth:`dyve.dynamic.unit.Unit.forward`) and falls
back for good where they differ.

It covers the common block ``post_act(bn2(conv2(act(bn1(conv1(x))))) + shortcut(x))`` with
batch-norm after both convolutions and a ReLU between them; anything else (no batch norm,
another activation, the global predictor, every channel dropped) uses the generic path.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn

from dyve.dynamic.taps import Tap

if TYPE_CHECKING:
    from dyve.dynamic.unit import Unit
    from dyve.mechanisms.lcnet.gates import LCGate

#: channel patterns whose sliced weights are kept per block (least recently used dropped)
PATTERNS = 16

Mods = tuple[nn.Conv2d, nn.BatchNorm2d, nn.Conv2d, nn.BatchNorm2d]


@dataclass(frozen=True)
class Sliced:
    """One channel pattern's tensors: the kept channels, the gated conv's and batch norm's
    rows for them, and the next conv's weight restricted to them as inputs."""

    idx: torch.Tensor
    w1: torch.Tensor
    bias1: torch.Tensor | None
    w2: torch.Tensor
    mean: torch.Tensor  # the batch norm's running mean, running var, weight and bias rows
    var: torch.Tensor
    weight: torch.Tensor | None
    bias: torch.Tensor | None


class SingleSample:
    """The straight-line batch-1 path of one gated block (see the module docstring)."""

    def __init__(self, gate: LCGate, unit: Unit) -> None:
        p = gate.plan
        block = unit.module

        def module(path: str | None) -> nn.Module | None:
            if path is None:
                return None
            m = block.get_submodule(path[len(unit.name) + 1 :])
            return m.module if isinstance(m, Tap) else m

        gated = p.gated
        conv1 = module(gated.name) if gated else None
        bn1 = module(gated.bn) if gated else None
        act = module(gated.act) if gated else None
        conv2, bn2 = module(p.last.name), module(p.last.bn)
        supported = (
            isinstance(conv1, nn.Conv2d)
            and isinstance(bn1, nn.BatchNorm2d)
            and type(act) is nn.ReLU
            and isinstance(conv2, nn.Conv2d)
            and isinstance(bn2, nn.BatchNorm2d)
            and not gate._source
        )
        self.gate, self.unit = gate, unit
        #: gated conv, its batch norm, the last conv, its batch norm (None: unsupported)
        self.mods = cast(Mods, (conv1, bn1, conv2, bn2)) if supported else None
        self.shortcut = module(p.block.shortcut)
        self.post_act = module(p.block.post_act)
        self._eps: tuple[float | None, float] = (None, 0.0)  # (knob, as float32)
        self._cache: OrderedDict[tuple[object, ...], Sliced] = OrderedDict()

    def __call__(self, x: torch.Tensor) -> torch.Tensor | None:
        """The block's output for the one sample ``x``; None where the generic path must run."""
        g = self.gate
        if self.mods is None or g.eps is None or g.training:  # training scales, never skips
            return None
        g.slot.clear()
        if self._eps[0] != g.eps:  # compared in float32, as the generic path's tensors are
            self._eps = (g.eps, float(torch.tensor(g.eps, dtype=torch.float32)))
        eps = self._eps[1]
        p = x.mean((2, 3))
        s_l: torch.Tensor | None = None
        if g.l is not None:
            s_l = torch.addmv(g.l.bias, g.l.weight, p[0]).clamp_(0.0, 1.0)
            if not s_l.item() > eps:
                return self.unit.skip_output(x)
        if g.c is None:
            return self._block(x, None, None, s_l)
        zc = torch.addmv(g.c.bias, g.c.weight, p[0]).unsqueeze(0).clamp_(0.0, 1.0)
        kept = tuple(j for j, v in enumerate(zc[0].tolist()) if v > eps)
        if not kept:
            return None
        if len(kept) == zc.shape[1]:
            return self._block(x, None, zc, s_l)
        return self._block(x, self._sliced(kept), zc, s_l)

    def _sliced(self, kept: tuple[int, ...]) -> Sliced:
        """The tensors of pattern ``kept``, cached (the generic path's :meth:`Tap._params`)."""
        assert self.mods is not None
        c1, b1, c2, _ = self.mods
        tensors = [c1.weight, b1.weight, b1.bias, b1.running_mean, b1.running_var, c2.weight]
        key = (kept, *(t._version for t in tensors if t is not None))
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        idx = torch.tensor(kept, dtype=torch.int64, device=c1.weight.device)

        def rows(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.detach().index_select(0, idx)

        mean, var = rows(b1.running_mean), rows(b1.running_var)
        assert mean is not None, "eval mode uses the running statistics"
        assert var is not None
        hit = Sliced(
            idx,
            c1.weight.detach().index_select(0, idx),
            rows(c1.bias),
            c2.weight.detach().index_select(1, idx),
            mean,
            var,
            rows(b1.weight),
            rows(b1.bias),
        )
        self._cache[key] = hit
        if len(self._cache) > PATTERNS:
            self._cache.popitem(last=False)
        return hit

    def _block(
        self,
        x: torch.Tensor,
        sliced: Sliced | None,
        zc: torch.Tensor | None,
        s_l: torch.Tensor | None,
    ) -> torch.Tensor:
        """The block on ``x`` with the gated channels ``sliced`` (None: all) scaled by ``zc``."""
        assert self.mods is not None
        c1, b1, c2, b2 = self.mods
        if sliced is None:
            h = b1(c1(x))
        else:
            h = F.conv2d(x, sliced.w1, sliced.bias1, c1.stride, c1.padding, c1.dilation)
            h = F.batch_norm(
                h, sliced.mean, sliced.var, sliced.weight, sliced.bias, False, 0.0, b1.eps
            )
        if zc is not None:
            s = zc if sliced is None else zc.index_select(1, sliced.idx)
            h = h * s.view(*s.shape, 1, 1)
        h = F.relu(h)
        if sliced is None:
            y = b2(c2(h))
        else:
            y = b2(F.conv2d(h, sliced.w2, c2.bias, c2.stride, c2.padding, c2.dilation))
        if s_l is not None:
            y = y * s_l.view(1, 1, 1, 1)
        out: torch.Tensor = y + (x if self.shortcut is None else self.shortcut(x))
        return out if self.post_act is None else cast(torch.Tensor, self.post_act(out))
