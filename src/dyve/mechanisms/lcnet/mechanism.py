"""LC-Net (Xia et al.) and the ConvNet-AIG baseline as mechanisms over the shared block gates.

LC-Net: per residual block an L-Net (pool -> linear -> ReLU1) scales the residual branch
and a C-Net (same input -> linear -> ReLU1) scales the branch's intermediate channels;
exact zeros skip (the block, or the channels: the fast back-end computes only the kept
ones). ``predictor="global"`` replaces the per-block predictors with one linear predictor
on the first block's input (the BlockDrop-like variant the paper may also mean). Trained by
:mod:`dyve.mechanisms.lcnet.train` with ``regularizer`` added to the cross-entropy.

ConvNet-AIG (Veit & Belongie, 2018): per block a small gate with a Gumbel-softmax
straight-through estimator in training and a hard decision at test; trained with a
target-rate loss (``target_loss``). Binary layer skipping only, no scaling.

SkipNet-style (after Wang et al., 2018, whose gates learn by policy gradient): AIG's gate
as a stochastic policy. In training each block runs for a sample with the probability the
gate gives it; the gates learn by REINFORCE (``policy_loss``) from a per-sample reward,
the negative cross-entropy minus ``alpha`` times the share of the blocks' MACs the sample
ran, while the backbone learns from the task loss on the sampled network. At test the
decision is AIG's, so both are lowered and timed alike. Knob: ``threshold``, as AIG's.

Knobs: LC-Net's ``eps`` (None = off, i.e. the backbone; a trained net uses 0: skip exact
zeros; larger values skip small scales too) and AIG's ``threshold`` (None = off; 0.5 = the
trained decision).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from dyve.dynamic.taps import Slot
from dyve.mechanisms.base import MECHANISMS
from dyve.mechanisms.dyvedeep.runner import NativeRunner
from dyve.mechanisms.lcnet.blocks import BlockGates, BlockPlan, Taps, set_all
from dyve.mechanisms.lcnet.gates import AIGGate, GlobalPredictor, LCGate, PolicyGate

if TYPE_CHECKING:
    from dyve.dynamic.net import DynamicNet
    from dyve.mechanisms.dyvedeep.program import Program

PREDICTORS = ("block", "global")
WEIGHTINGS = ("none", "macs")


@dataclass(frozen=True)
class LCNetConfig:
    """Settings of :class:`LCNet`."""

    #: Skip where a scale is <= eps; None = predictors off (the backbone). Knob.
    eps: float | None = None
    #: L-Net (layer skipping) on.
    layer: bool = True
    #: C-Net (channel skipping) on.
    channel: bool = True
    #: ``block`` (one L-Net/C-Net per block) or ``global`` (one predictor for all).
    predictor: str = "block"
    #: Blocks to gate (default: every residual block that holds no other).
    blocks: tuple[str, ...] | None = None
    #: Initial predictor bias (1: scales start at 1, the network starts as the backbone).
    init_bias: float = 1.0
    #: Std of the initial predictor weights (0: zeros).
    init_std: float = 0.0

    def __post_init__(self) -> None:
        if not (self.layer or self.channel):
            raise ValueError("lcnet: enable layer and/or channel gating")
        if self.predictor not in PREDICTORS:
            raise ValueError(f"lcnet: predictor must be one of {PREDICTORS}")
        if self.eps is not None and self.eps < 0:
            raise ValueError(f"lcnet: eps must be >= 0 or None, got {self.eps}")


class LCNet(BlockGates, NativeRunner):
    """L-Net + C-Net on every residual block (see module docstring)."""

    name = "lcnet"
    config_class = LCNetConfig
    knob_names = ("eps",)
    #: the fast back-end computes the union of a batch's kept channels (batch 1: exact)
    fast_cost_exact = False
    batch_cost_exact = False

    def taps(self) -> Taps:
        return Taps(layer=self.config.layer, channel=self.config.channel)

    def make_gate(self, p: BlockPlan, slot: Slot, net: DynamicNet, k: int) -> nn.Module:
        cfg = self.config
        source = None
        if cfg.predictor == "global":
            if k == 0:
                sizes = [(int(cfg.layer), q.c_mid if cfg.channel else 0) for q in self.plans]
                self._global = GlobalPredictor(p.c_in, sizes, cfg.init_bias, cfg.init_std)
            source = self._global
        gate = LCGate(
            p,
            slot,
            net._state,
            layer=cfg.layer,
            channel=cfg.channel,
            bias=cfg.init_bias,
            std=cfg.init_std,
            source=source,
            first=k == 0,
            k=k,
        )
        gate.eps = cfg.eps
        return gate

    def lower(self, net: DynamicNet, x: torch.Tensor) -> Program | None:
        """The network with its gated blocks as one native program (:mod:`.program`); None
        with the predictors off (the per-block path is then the backbone bit for bit)."""
        from dyve.mechanisms.lcnet.program import GatedProgram

        return None if self.config.eps is None else GatedProgram(net, x, self)

    def set_knob(self, knob: str, value: Any) -> None:
        self._check_knob(knob)
        eps = None if value is None else float(value)
        self.config = replace(self.config, eps=eps)
        set_all(self.gates, "eps", eps)

    def regularizer(self, lam_l: float, lam_c: float, weighting: str = "none") -> torch.Tensor:
        """``lam_l * sum_blocks mean|s_L| + lam_c * sum_blocks mean ||s_C||_1`` of the last
        training forward (the paper's sparsity loss, averaged over the batch).

        The loss reads the predictors' outputs clipped at 0 but not at 1: ReLU1 passes no
        gradient above 1, so a scale that the cross-entropy pushed past 1 would otherwise
        never feel the loss again and stay open for good (dyve's choice; see the docs).

        ``weighting="macs"`` weighs each block's terms by what they save: s_L by the
        block's MACs, each channel by its share of the block's gated MACs, normalised so
        that the weights average 1 (over blocks, and over channels). The paper's loss is
        ``"none"``; ``"macs"`` aims the same budget at FLOPs.
        """
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        wl, wc = self._weights(weighting)
        total = torch.zeros(())
        for gate, a, b in zip(self.gates, wl, wc, strict=True):
            s_l, s_c = cast(LCGate, gate).penalised
            if s_l is not None and lam_l:
                total = total + lam_l * a * s_l.mean()
            if s_c is not None and lam_c:
                total = total + lam_c * b * s_c.sum(1).mean()
        return total

    def training_reduction(self, static_macs: float) -> float:
        """The MAC reduction (``static_macs`` / mean MACs per sample) the decisions of the
        last training forward stand for: a block runs where its s_L > 0 and computes the
        channels whose s_C > 0 (the predictors' own MACs, under 1 % of a block's, are left
        out). What ``dyve lcnet train --target-reduction`` steers."""
        fixed = static_macs - sum(float(p.block.macs) for p in self.plans)
        blocks = 0.0
        for gate in self.gates:
            g = cast(LCGate, gate)
            kept = g.run_macs()  # each sample's kept channels (training is emulated)
            macs = torch.tensor(float(g.plan.block.macs)) if kept is None else kept
            if g.slot.s_l is not None:
                macs = macs * (g.slot.s_l > 0).cpu()
            blocks += float(macs.mean())
        return static_macs / (fixed + blocks)

    def _weights(self, weighting: str) -> tuple[list[float], list[float]]:
        n = len(self.plans)
        if weighting == "none":
            return [1.0] * n, [1.0] * n
        macs = [float(p.block.macs) for p in self.plans]
        per_channel = [p.gated_macs / p.c_mid if p.c_mid else 0.0 for p in self.plans]
        channels = sum(p.c_mid for p in self.plans) or 1
        mean_c = sum(w * p.c_mid for w, p in zip(per_channel, self.plans, strict=True)) / channels
        return [m * n / sum(macs) for m in macs], [
            w / mean_c if mean_c else 0.0 for w in per_channel
        ]


@dataclass(frozen=True)
class AIGConfig:
    """Settings of :class:`ConvNetAIG`."""

    #: Run a block where P(open) > threshold; None = gates off (the backbone). Knob.
    threshold: float | None = None
    #: Blocks to gate (default: every residual block that holds no other).
    blocks: tuple[str, ...] | None = None
    #: Hidden width of each gate.
    hidden: int = 16
    #: Initial logit margin of "run" over "skip" (3: gates start open with p ~ 0.95).
    open_bias: float = 3.0

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise ValueError(f"aig: threshold must be in [0, 1] or None, got {self.threshold}")


class ConvNetAIG(BlockGates, NativeRunner):
    """ConvNet-AIG's Gumbel gates on every residual block (see module docstring)."""

    name = "aig"
    config_class = AIGConfig
    knob_names = ("threshold",)

    def taps(self) -> Taps:
        return Taps(layer=True, channel=False)

    def make_gate(self, p: BlockPlan, slot: Slot, net: DynamicNet, k: int) -> nn.Module:
        gate = AIGGate(p, slot, hidden=self.config.hidden, open_bias=self.config.open_bias)
        gate.threshold = self.config.threshold
        return gate

    def lower(self, net: DynamicNet, x: torch.Tensor) -> Program | None:
        """The network with its gated blocks as one native program (:mod:`.program`); None
        with the gates off."""
        from dyve.mechanisms.lcnet.program import GatedProgram

        return None if self.config.threshold is None else GatedProgram(net, x, self)

    def set_knob(self, knob: str, value: Any) -> None:
        self._check_knob(knob)
        threshold = None if value is None else float(value)
        self.config = replace(self.config, threshold=threshold)
        set_all(self.gates, "threshold", threshold)

    def target_loss(self, target: float) -> torch.Tensor:
        """Mean over blocks of (fraction of the batch that ran the block - target)^2."""
        gates = [g for g in self.gates if isinstance(g, AIGGate)]
        rates = [g.last.mean() for g in gates if g.last is not None]
        if not rates:
            return torch.zeros(())
        return torch.stack([(r - target) ** 2 for r in rates]).mean()


class SkipNetStyle(ConvNetAIG):
    """AIG's gates as policies trained by policy gradient (see module docstring)."""

    name = "skipnet"

    def make_gate(self, p: BlockPlan, slot: Slot, net: DynamicNet, k: int) -> nn.Module:
        gate = PolicyGate(p, slot, hidden=self.config.hidden, open_bias=self.config.open_bias)
        gate.threshold = self.config.threshold
        return gate

    def executed_share(self) -> torch.Tensor:
        """Per sample of the last training call: the share of the gated blocks' MACs its
        draws ran."""
        gates = [cast(PolicyGate, g) for g in self.gates]
        macs = torch.tensor([float(g.plan.block.macs) for g in gates])
        ran = torch.stack([cast(torch.Tensor, g.last).float().cpu() for g in gates], 1)
        return (ran * macs).sum(1) / macs.sum()

    def policy_loss(self, reward: torch.Tensor) -> torch.Tensor:
        """REINFORCE over the last training call's draws, with the batch's mean reward as
        the baseline: ``-mean_i (R_i - mean R) * sum_blocks log pi(draw_i)``. ``reward``:
        per sample, no gradient."""
        logp = torch.stack([cast(torch.Tensor, cast(PolicyGate, g).logp) for g in self.gates], 1)
        adv = (reward - reward.mean()).to(logp.device)
        return -(adv.detach() * logp.sum(1)).mean()


def register() -> None:
    """Register LC-Net and the ConvNet-AIG and SkipNet-style baselines."""
    MECHANISMS.add(LCNet.name, LCNet)
    MECHANISMS.add(ConvNetAIG.name, ConvNetAIG)
    MECHANISMS.add(SkipNetStyle.name, SkipNetStyle)
