"""The shared part of block-gating mechanisms: which modules of a residual block to tap.

LC-Net and ConvNet-AIG both act on residual blocks the core discovered: a layer scale on
the residual branch, and (LC-Net) a channel scale on the branch's intermediate channels.
:func:`plan` reads the block's structure from the graph; :class:`BlockGates` installs the
taps of :mod:`dyve.dynamic.taps` and one gate per block, and owns the knob plumbing.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from dyve.dynamic.taps import Slot, Tap
from dyve.dynamic.unit import Unit
from dyve.errors import DyveError
from dyve.graph.blocks import Block, Site
from dyve.mechanisms.base import Mechanism

if TYPE_CHECKING:
    from dyve.dynamic.net import DynamicNet


@dataclass(frozen=True)
class BlockPlan:
    """What a block gate needs to know about its block."""

    block: Block
    #: channels of the block input (what the predictors pool)
    c_in: int
    #: the site whose output channels are gated (None: the branch has one layer)
    gated: Site | None
    #: the branch's last site (reads the gated channels; its output gets the layer scale)
    last: Site

    @property
    def c_mid(self) -> int:
        """Number of gated channels (0 when there is no gated site)."""
        return self.gated.out_shape[0] if self.gated is not None else 0

    @property
    def gated_macs(self) -> int:
        """MACs of the two layers whose cost scales with the kept channels."""
        return self.gated.macs + self.last.macs if self.gated is not None else 0


def _under(name: str, path: str | None) -> bool:
    return path is not None and (name == path or name.startswith(path + "."))


def plan(net: DynamicNet, name: str) -> BlockPlan:
    """Read block ``name``'s branch from the graph; refuse what the taps cannot handle."""
    g = net.graph
    block = g.block(name)
    branch = [
        s for s in g.sites if s.name.startswith(name + ".") and not _under(s.name, block.shortcut)
    ]
    if not branch or branch[-1].kind != "conv":
        raise DyveError(f"block {name}: its residual branch must end in a convolution")
    gated = branch[-2] if len(branch) >= 2 else None
    if gated is not None:
        module = net.backbone.get_submodule(gated.name)
        nxt = net.backbone.get_submodule(branch[-1].name)
        act = net.backbone.get_submodule(gated.act) if gated.act else None
        ok = (
            isinstance(module, nn.Conv2d)
            and isinstance(nxt, nn.Conv2d)
            and module.groups == 1
            and nxt.groups == 1
            and module.out_channels == nxt.in_channels
            and (act is None or type(act) in (nn.ReLU, nn.LeakyReLU))
            and (
                gated.bn is None or isinstance(net.backbone.get_submodule(gated.bn), nn.BatchNorm2d)
            )
        )
        if not ok:  # grouped convs, non-homogeneous activations: no channel gating here
            gated = None
    return BlockPlan(block, block.in_shape[0], gated, branch[-1])


@dataclass(frozen=True)
class Taps:
    """Which taps a mechanism wants: the layer scale, the channel scale and slicing."""

    layer: bool
    channel: bool


class BlockGates(Mechanism):
    """Base of mechanisms with one gate per residual block (see module docstring)."""

    @abstractmethod
    def taps(self) -> Taps:
        """Which scales this mechanism applies."""

    @abstractmethod
    def make_gate(self, p: BlockPlan, slot: Slot, net: DynamicNet, k: int) -> nn.Module:
        """The gate of the ``k``-th gated block."""

    def attach(self, net: DynamicNet) -> None:
        names = [b.name for b in net.graph.blocks]
        blocks: tuple[str, ...] = self.config.blocks or tuple(
            n for n in names if not any(m.startswith(n + ".") for m in names)
        )
        if not blocks:
            raise DyveError(f"{self.name}: the backbone has no residual blocks to gate")
        want = self.taps()
        self.plans = [plan(net, b) for b in blocks]
        if want.channel and not want.layer and not any(p.gated for p in self.plans):
            raise DyveError(f"{self.name}: no block has a channel-gatable branch")
        self.gates: list[nn.Module] = []
        self.slots: list[Slot] = []
        for k, p in enumerate(self.plans):
            unit = net.unit(p.block.name)
            slot = Slot()

            def tap(path: str, unit: Unit = unit, slot: Slot = slot, **kw: Any) -> None:
                parent_name, _, attr = path[len(unit.name) + 1 :].rpartition(".")
                block = unit.module
                parent = block.get_submodule(parent_name) if parent_name else block
                setattr(parent, attr, Tap(getattr(parent, attr), slot, **kw))

            channel = want.channel and p.gated is not None
            if p.gated is not None and channel:
                if p.gated.bn is not None:
                    tap(p.gated.name, slice="out")
                    tap(p.gated.bn, slice="bn", scale="c")
                else:
                    tap(p.gated.name, slice="out", scale="c")
            last, layer = p.last, "l" if want.layer else None
            if last.bn is None:
                if channel or layer:
                    tap(last.name, slice="in" if channel else None, scale=layer)
            else:
                if channel:
                    tap(last.name, slice="in")
                if layer:
                    tap(last.bn, scale="l")
            gate = self.make_gate(p, slot, net, k)
            unit.add_gate(self.name, gate)
            self.gates.append(gate)
            self.slots.append(slot)


def set_all(gates: list[nn.Module], attr: str, value: Any) -> None:
    """Set ``attr`` on every gate (a knob's value)."""
    for g in gates:
        setattr(g, attr, value)
