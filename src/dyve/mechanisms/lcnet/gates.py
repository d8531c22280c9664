"""The per-block gates: LC-Net's predictors (L-Net, C-Net), ConvNet-AIG's Gumbel gate and
the same gate as a sampled policy (SkipNet-style).

Each gate reads its block's input, writes the scales of the current call into the block's
:class:`~dyve.dynamic.taps.Slot` and returns the per-sample run decision to the unit
(:mod:`dyve.dynamic.unit`). In training mode nothing is skipped: the scales multiply the
branch so that gradients reach the predictors; in eval mode exact zeros skip the block
(``s_L = 0``) or channels (``s_C[j] = 0``), and in the fast back-end the skipped channels
are not computed (the union of the batch's kept channels is).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dyve.dynamic.taps import Slot
from dyve.dynamic.unit import RunState, Unit
from dyve.errors import DyveError
from dyve.mechanisms.lcnet.blocks import BlockPlan
from dyve.mechanisms.lcnet.single import SingleSample


def relu1(z: torch.Tensor, reopen: bool = False) -> torch.Tensor:
    """ReLU1 = clamp(z, 0, 1): exact zeros (skip) and exact ones (keep as is).

    With ``reopen`` (training only, dyve's option; C-Net's channels) the values are the
    same but the gradient also passes where ``z <= 0`` (straight-through at the zero): a
    closed channel still learns what opening it would do to the loss, so one closed by
    drift can open again.
    """
    s = z.clamp(0.0, 1.0)
    return s + (z - z.detach()) * (z <= 0) if reopen else s


def _affine(p: torch.Tensor, lin: nn.Linear) -> torch.Tensor:
    """``lin(p)`` in one op for a single row (``addmv``), else ``F.linear``."""
    if p.shape[0] == 1:
        return torch.addmv(lin.bias, lin.weight, p[0]).unsqueeze(0)
    return F.linear(p, lin.weight, lin.bias)


def _linear(c_in: int, c_out: int, bias: float, std: float) -> nn.Linear:
    lin = nn.Linear(c_in, c_out)
    nn.init.normal_(lin.weight, 0.0, std) if std > 0 else nn.init.zeros_(lin.weight)
    nn.init.constant_(lin.bias, bias)
    return lin


class GlobalPredictor(nn.Module):
    """One linear predictor on the first gated block's input for every block (BlockDrop-like).

    Its outputs for a call are kept until the next call on the first block; later blocks
    read their slice. Rows must not change between blocks (no early exits in between).
    """

    def __init__(self, c_in: int, sizes: list[tuple[int, int]], bias: float, std: float) -> None:
        super().__init__()
        self.sizes = sizes  # per block: (layer outputs 0/1, channel outputs)
        self.fc = _linear(c_in, sum(a + b for a, b in sizes), bias, std)
        self.out: torch.Tensor | None = None

    def block(self, k: int, n: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Block ``k``'s (layer, channel) pre-activations of the current call."""
        if self.out is None or self.out.shape[0] != n:
            raise DyveError(
                "the global LC-Net predictor saw another batch than this block "
                "(it cannot be combined with early exits)"
            )
        start = sum(a + b for a, b in self.sizes[:k])
        a, b = self.sizes[k]
        z = self.out[:, start : start + a + b]
        return (z[:, :a] if a else None), (z[:, a:] if b else None)


class LCGate(nn.Module):
    """L-Net and C-Net of one block (or its slice of the global predictor)."""

    def __init__(
        self,
        p: BlockPlan,
        slot: Slot,
        state: RunState,
        *,
        layer: bool,
        channel: bool,
        bias: float,
        std: float,
        source: GlobalPredictor | None = None,
        first: bool = False,
        k: int = 0,
    ) -> None:
        super().__init__()
        self.plan, self.slot, self._state = p, slot, state
        self.layer, self.channel = layer, channel and p.gated is not None
        self.k, self.first = k, first
        #: knob: None = off (the backbone); else skip where a scale is <= eps
        self.eps: float | None = None
        #: training: closed channels still get a gradient (:func:`relu1`); set by the
        #: trainer. Not closed blocks: a branch left out for epochs is stale, and opening
        #: it on a first-order hint blew the loss up (NaN in 6 steps; NOTES, session 28).
        self.reopen = False
        self.l = _linear(p.c_in, 1, bias, std) if layer and source is None else None
        self.c = _linear(p.c_in, p.c_mid, bias, std) if self.channel and source is None else None
        self._source = [source] if source is not None else []  # not a child: owned by `first`
        #: (layer, channel) outputs of the last training call, as the sparsity loss sees them
        self.penalised: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
        if first and source is not None:
            self.predictor = source
        self._single: SingleSample | None = None

    def _pre(self, p: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Pre-activations of L-Net and C-Net for every row of the pooled inputs ``p``."""
        if self._source:
            src = self._source[0]
            if self.first:
                src.out = src.fc(p)
            return src.block(self.k, p.shape[0])
        return (self.l(p) if self.l is not None else None), (
            self.c(p) if self.c is not None else None
        )

    def decide(self, x: torch.Tensor) -> torch.Tensor | None:
        self.slot.clear()
        if self.eps is None:
            return None
        if self.training or self._source:
            return self._decide_all(x)
        return self._decide_eval(x)

    def _decide_all(self, x: torch.Tensor) -> torch.Tensor | None:
        """Both predictors on every row: training (scales multiply, gradients flow, nothing
        is skipped) and the global predictor (one linear for every block anyway)."""
        slot, eps = self.slot, float(self.eps or 0.0)
        zl, zc = self._pre(x.mean((2, 3)))
        reopen = self.reopen and self.training
        s_l = relu1(zl[:, 0]) if zl is not None else None  # closed blocks stay closed
        s_c = relu1(zc, reopen) if zc is not None else None
        if self.training:
            slot.s_l, slot.s_c, slot.reopen = s_l, s_c, reopen
            # what the sparsity loss sees: clipped at 0 only, so that an output pushed
            # above 1 (where ReLU1 passes no gradient) is still pulled back
            self.penalised = (
                F.relu(zl[:, 0]) if zl is not None else None,
                F.relu(zc) if zc is not None else None,
            )
            return None
        run = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        if s_l is not None:
            run = s_l > eps
        if s_c is not None:
            s_c = s_c * ((s_c > eps) & run[:, None])
            self._slice(s_c[run])
        slot.s_l, slot.s_c, slot.run = s_l, s_c, run
        return run

    def _decide_eval(self, x: torch.Tensor) -> torch.Tensor:
        """Per-block predictors at inference, in few ops (batch 1 is the common case): L-Net
        first; C-Net only for the rows whose block runs.

        A skipped row's ``s_L`` is left as it is: the unit gives it the skip output.
        """
        slot, eps, n = self.slot, float(self.eps or 0.0), x.shape[0]
        p = x.mean((2, 3))
        rows: torch.Tensor | None = None  # rows that run (None: all)
        if self.l is not None:
            s_l = _affine(p, self.l).clamp_(0.0, 1.0)[:, 0]
            run = s_l > eps
            slot.s_l, slot.run = s_l, run
            if n == 1:
                if not bool(run):
                    return run
            else:
                rows = run.nonzero().squeeze(1)
                if rows.numel() == 0:
                    return run
                if rows.numel() == n:
                    rows = None
        else:
            run = torch.ones(n, dtype=torch.bool, device=x.device)
            slot.run = run
        if self.c is None:
            return run
        pc = p if rows is None else p.index_select(0, rows)
        zc = _affine(pc, self.c).clamp_(0.0, 1.0)
        if eps > 0:  # with eps = 0, ReLU1 already gives the exact zeros
            zc.masked_fill_(zc <= eps, 0.0)
        if rows is None:
            slot.s_c = zc
        else:
            slot.s_c = zc.new_zeros(n, zc.shape[1]).index_copy_(0, rows, zc)
        self._slice(zc)
        return run

    def forward_single(self, x: torch.Tensor, unit: Unit) -> torch.Tensor | None:
        """The unit's output for one sample (fast back-end, untraced): see :mod:`.single`."""
        if self._single is None:
            self._single = SingleSample(self, unit)
        return self._single(x)

    def _slice(self, kept_rows: torch.Tensor) -> None:
        """Fast back-end: the channels any running row keeps (None when all are kept)."""
        if self._state.backend != "fast" or kept_rows.shape[0] == 0:
            return
        kept = (kept_rows > 0).any(0) if kept_rows.shape[0] > 1 else kept_rows[0] > 0
        idx = kept.nonzero().squeeze(1)
        if idx.numel() < kept.numel():
            self.slot.idx = idx

    def overhead_macs(self, x: torch.Tensor) -> torch.Tensor:
        """Predictor MACs per sample: L-Net always, C-Net only where the block runs."""
        n, p = x.shape[0], self.plan
        if self._source:
            src = self._source[0]
            total = src.fc.in_features * src.fc.out_features if self.first else 0
            return torch.full((n,), float(total), dtype=torch.float64)
        run = self.slot.run if self.slot.run is not None else torch.ones(n, dtype=torch.bool)
        cost = torch.full((n,), float(p.c_in if self.layer else 0), dtype=torch.float64)
        return cost + run.cpu().double() * float(p.c_in * p.c_mid if self.channel else 0)

    def run_macs(self) -> torch.Tensor | None:
        """Per-sample MACs of the block when it runs, with only the kept channels."""
        s_c, p = self.slot.s_c, self.plan
        if s_c is None:
            return None
        if self.slot.idx is not None:  # fast: what was computed, the batch's union
            k = torch.full((s_c.shape[0],), float(self.slot.idx.numel()), dtype=torch.float64)
        elif self._state.backend == "fast":
            k = torch.full((s_c.shape[0],), float(p.c_mid), dtype=torch.float64)
        else:  # emulated: each sample's own kept channels
            k = (s_c > 0).sum(1).cpu().double()
        out: torch.Tensor = (p.block.macs - p.gated_macs) + p.gated_macs * k / p.c_mid
        return out

    def extra_repr(self) -> str:
        return f"eps={self.eps}, layer={self.layer}, channel={self.channel}"


class AIGGate(nn.Module):
    """ConvNet-AIG's gate: pool -> FC -> BN -> ReLU -> FC(2), Gumbel-softmax when training."""

    def __init__(self, p: BlockPlan, slot: Slot, hidden: int = 16, open_bias: float = 3.0) -> None:
        super().__init__()
        self.plan, self.slot = p, slot
        self.fc1 = nn.Linear(p.c_in, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, 2)
        with torch.no_grad():  # start (almost) always open: the network starts as the backbone
            self.fc2.bias.copy_(torch.tensor([0.0, open_bias]))
        #: knob: None = off; else run where P(open) > threshold
        self.threshold: float | None = None
        #: the last training call's hard gates (for the target-rate loss)
        self.last: torch.Tensor | None = None

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(skip, run) logits of each row of the block's input ``x``."""
        out: torch.Tensor = self.fc2(F.relu(self.bn(self.fc1(x.mean((2, 3))))))
        return out

    def decide(self, x: torch.Tensor) -> torch.Tensor | None:
        self.slot.clear()
        if self.threshold is None:
            return None
        z = self.logits(x)
        if self.training:
            g = F.gumbel_softmax(z, tau=1.0, hard=True)[:, 1]
            self.slot.s_l, self.last = g, g
            return None
        run: torch.Tensor = z.softmax(1)[:, 1] > self.threshold
        self.slot.run = run
        return run

    def overhead_macs(self, x: torch.Tensor) -> float:
        h = self.fc1.out_features
        return float(self.plan.c_in * h + h * 2)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"


class PolicyGate(AIGGate):
    """ConvNet-AIG's gate as a stochastic policy (SkipNet-style, trained by policy gradient).

    In training each sample's decision is drawn from P(run), with no gradient through the
    draw; the log-probability of the draw is kept for the policy-gradient loss
    (:meth:`~dyve.mechanisms.lcnet.mechanism.SkipNetStyle.policy_loss`). In eval mode it
    is AIG's gate: run where P(run) > threshold (so it is lowered and timed as AIG's).
    """

    def __init__(self, p: BlockPlan, slot: Slot, hidden: int = 16, open_bias: float = 3.0) -> None:
        super().__init__(p, slot, hidden, open_bias)
        #: log-probability of each sample's draw in the last training call
        self.logp: torch.Tensor | None = None

    def decide(self, x: torch.Tensor) -> torch.Tensor | None:
        if not self.training or self.threshold is None:
            return super().decide(x)
        self.slot.clear()
        z = self.logits(x)
        logp = F.log_softmax(z.float(), 1)
        d = torch.bernoulli(logp[:, 1].detach().exp())
        self.slot.s_l, self.last = d.to(z.dtype), d
        self.logp = torch.where(d > 0, logp[:, 1], logp[:, 0])
        return None
