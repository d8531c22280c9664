"""A site unit: one conv/linear layer (with its BN and ReLU) whose computation a mechanism replaces.

Block units (:mod:`dyve.dynamic.unit`) decide *whether* a module runs; a site unit lets a
mechanism decide *how* a layer is computed, neuron by neuron (DyVEDeep's knobs). The unit
wraps the layer; its batch norm and activation stay where they are, wrapped in a
:class:`Tail`. When the mechanism's op is active, the unit computes the whole
``act(bn(layer(x)))`` itself from the folded weights and the tails pass their input through;
when it is off, the layer runs untouched and the tails run their modules, so with every
knob off the network is the backbone bit for bit.

The op reports per-sample MACs, scalar operations and its own cost parts, which the unit
writes into the trace under its name (status ``APPROXIMATED`` for a sample when any knob
acted on it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from dyve.dynamic.trace import APPROXIMATED, RAN
from dyve.dynamic.unit import RunState
from dyve.graph.blocks import Site


@dataclass
class SiteResult:
    """What a site op returns for a batch of ``N`` samples."""

    #: the site's output after its fused tails (shape of the layer's output)
    out: torch.Tensor
    #: per-sample MACs of the dot-product terms that were computed, ``[N]``
    macs: torch.Tensor
    #: per-sample scalar operations including every overhead, ``[N]``
    scalar_ops: torch.Tensor
    #: per-sample: did any knob act (skip, approximate or terminate anything)? ``[N]`` bool
    changed: torch.Tensor
    #: the op's own per-sample cost parts (e.g. ops each knob saved), for the breakdown
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


class SiteOp(Protocol):
    """What a mechanism attaches to a site unit."""

    def active(self) -> bool:
        """False when every knob at this site is off (the layer then runs untouched)."""

    def compute(self, x: torch.Tensor, unit: SiteUnit) -> SiteResult:
        """The site's output for input ``x`` and its per-sample cost."""


def state_key(modules: tuple[nn.Module, ...]) -> tuple[tuple[int, int], ...]:
    """Changes whenever a parameter or buffer of ``modules`` is modified or replaced.

    Reads the modules' tensor dicts directly: attribute access through ``nn.Module`` costs
    more than the rest of a batch-1 site call's Python (benchmarks/NOTES.md).
    """
    return tuple(
        (t._version, t.data_ptr())
        for m in modules
        for d in (m._parameters, m._buffers)
        for t in d.values()
        if t is not None
    )


@torch.no_grad()
def fold(layer: nn.Conv2d | nn.Linear, bn: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``bn(layer(x))`` as one layer (``bn``: a tracked BatchNorm or None)."""
    w = layer.weight.detach().clone()
    bias = layer.bias
    b = (
        bias.detach().clone()
        if bias is not None
        else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    )
    if isinstance(bn, nn.BatchNorm2d | nn.BatchNorm1d):
        if bn.running_var is None or bn.running_mean is None:
            raise ValueError("only a BatchNorm with running statistics can be folded")
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        w = w * scale.view(-1, *([1] * (w.dim() - 1)))
        b = (b - bn.running_mean) * scale
        if bn.bias is not None:
            b = b + bn.bias
    return w, b


class Tail(nn.Module):
    """A site's batch norm or ReLU: passes its input through when a site unit fused it.

    A module that several sites share (one ``self.relu`` called after each conv) gets one
    tail with several owners; each call consumes the pending fusion of one owner.
    """

    def __init__(self, module: nn.Module, role: str) -> None:
        super().__init__()
        self.module = module
        self.role = role
        self.owners: list[SiteUnit] = []  # a plain list: owners are not child modules

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for owner in self.owners:
            if self.role in owner.pending:
                owner.pending.discard(self.role)
                return x
        out: torch.Tensor = self.module(x)
        return out


class SiteUnit(nn.Module):
    """Wraps a conv/linear site; see the module docstring."""

    def __init__(self, site: Site, module: nn.Module, state: RunState) -> None:
        super().__init__()
        if not isinstance(module, nn.Conv2d | nn.Linear):
            raise TypeError(f"site {site.name}: only Conv2d and Linear sites can be wrapped")
        self.name = site.name
        self.site = site
        self.module = module
        self.macs = site.macs
        self.op: SiteOp | None = None
        self.tails: dict[str, Tail] = {}  # role ("bn", "act") -> tail; not registered here
        self.pending: set[str] = set()
        self._state = state
        self._folded: tuple[tuple[tuple[int, int], ...], torch.Tensor, torch.Tensor] | None = None

    def add_tail(self, role: str, tail: Tail) -> None:
        """Fuse the site's ``bn`` (a BatchNorm) or ``act`` (a ReLU) tail into this unit."""
        self.tails[role] = tail
        tail.owners.append(self)

    @property
    def backend(self) -> str:
        """The network's current back-end (``fast`` or ``emulated``)."""
        return self._state.backend

    @property
    def relu(self) -> bool:
        """True when the unit computes ``relu(...)`` itself (what SPET-like knobs need)."""
        return "act" in self.tails

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias of ``bn(layer(x))`` as one layer, cached until the weights change."""
        bn = self.tails["bn"].module if "bn" in self.tails else None
        key = state_key((self.module,) if bn is None else (self.module, bn))
        if self._folded is None or self._folded[0] != key:
            self._folded = (key, *fold(self.module, bn))
        return self._folded[1], self._folded[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        st = self._state
        op = self.op
        if op is None or self.training or not op.active():
            self.pending.clear()
            out: torch.Tensor = self.module(x)
            if st.trace is not None:
                st.trace.charge(self.name, st.rows, RAN, float(self.macs))
            return out
        res = op.compute(x, self)
        self.pending.update(self.tails)
        if st.trace is not None:
            status = torch.where(res.changed.cpu(), APPROXIMATED, RAN).to(torch.int8)
            st.trace.charge(self.name, st.rows, status, res.macs, res.scalar_ops, res.parts)
        return res.out

    def extra_repr(self) -> str:
        return f"site={self.name}, tails={sorted(self.tails)}, op={type(self.op).__name__}"
