"""Reference mechanism: skip residual blocks whose input carries little activation.

Not a published method: the simplest data-dependent block skipping, used to prove the
shared core (units, back-ends, trace, cost, saving, sweeps, the contract suite). A block is
skipped for a sample when the mean absolute value of its input is below ``threshold``;
``always`` lists blocks skipped for every sample (fixed skipping). With ``threshold=0`` and
no ``always`` it changes nothing. Its decision costs no MACs (one mean per sample, listed
as a statistic, not a multiply-accumulate).

Compatible with every other mechanism that gates blocks: gates on one unit combine by AND.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dyve.mechanisms.base import MECHANISMS, Mechanism

if TYPE_CHECKING:
    from dyve.dynamic.net import DynamicNet


@dataclass(frozen=True)
class BlockSkipConfig:
    """Settings of :class:`BlockSkip`."""

    #: Skip a block for a sample when mean |input| < threshold (0 = never). Knob.
    threshold: float = 0.0
    #: Blocks skipped for every sample. Knob.
    always: tuple[str, ...] = ()
    #: Blocks that may be skipped (default: every residual block that holds no other).
    blocks: tuple[str, ...] | None = None


class ActivationGate(nn.Module):
    """Run the unit when mean |x| >= threshold and the unit is not forced off."""

    def __init__(self, threshold: float, forced_off: bool) -> None:
        super().__init__()
        self.threshold = threshold
        self.forced_off = forced_off

    def decide(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.forced_off:
            return torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        if self.threshold <= 0:
            return None
        return x.abs().flatten(1).mean(1) >= self.threshold

    def overhead_macs(self, x: torch.Tensor) -> float:
        return 0.0

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, forced_off={self.forced_off}"


class BlockSkip(Mechanism):
    """Skip residual blocks with weak input (see module docstring)."""

    name = "block_skip"
    config_class = BlockSkipConfig
    knob_names = ("threshold", "always")

    def attach(self, net: DynamicNet) -> None:
        cfg = self.config
        names = [b.name for b in net.graph.blocks]
        # default: every block that contains no other block (units must not nest)
        blocks = cfg.blocks or tuple(
            n for n in names if not any(m.startswith(n + ".") for m in names)
        )
        unknown = set(cfg.always) - set(blocks)
        if unknown:
            raise ValueError(
                f"block_skip: 'always' names blocks it does not gate: {sorted(unknown)}"
            )
        self._gates: dict[str, ActivationGate] = {}
        for b in blocks:
            gate = ActivationGate(cfg.threshold, b in cfg.always)
            net.unit(b).add_gate(self.name, gate)
            self._gates[b] = gate

    def set_knob(self, knob: str, value: Any) -> None:
        self._check_knob(knob)
        if knob == "threshold":
            self.config = replace(self.config, threshold=float(value))
            for g in self._gates.values():
                g.threshold = float(value)
        else:
            always = (value,) if isinstance(value, str) else tuple(value)
            unknown = set(always) - set(self._gates)
            if unknown:
                raise ValueError(f"block_skip: cannot skip {sorted(unknown)}")
            self.config = replace(self.config, always=always)
            for b, g in self._gates.items():
                g.forced_off = b in always


def register() -> None:
    """Register the built-in reference mechanism."""
    MECHANISMS.add(BlockSkip.name, BlockSkip)
