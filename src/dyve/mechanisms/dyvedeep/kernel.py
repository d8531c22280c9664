"""DyVEDeep's three knobs on one layer, emulated with dense tensor ops, with exact op counts.

The emulation computes what a sequential implementation that really skips work would
output, and counts the scalar operations that implementation performs, neuron by neuron
(``tests/mechanisms/dyvedeep/test_kernel.py`` checks both against a literal Python loop).
Order of application (``docs/methods/dyvedeep.md``):

1. **SFMA** (per input channel and sample): a channel whose uniformity statistic is
   ``<= sfma`` contributes ``mean(x_c) * sum(W[o, c])`` to every output of map ``o``
   instead of being convolved. Those constants start each neuron's accumulator, with the
   bias.
2. **SDSS** (per output position): positions on the stride-``s`` grid are computed; an
   off-grid position whose bounding grid neighbours all have significance ``<= sdss``
   (the post-ReLU value, or ``|value|`` at a site without ReLU) is their mean instead.
3. **SPET** (per computed neuron; ReLU sites only): terms of the exact channels are added
   in the site's static order. *Predictive*: after the ``checkpoint`` largest-``|w|``
   terms, a partial sum ``<= spet`` stops the neuron at 0. *Exact*: after every
   positive-weight term (with non-negative inputs only), a partial sum ``<= 0`` is
   exactly the ReLU's 0, so the negative terms are skipped. Both: the check terms first,
   then the remaining positive terms, then the negative ones.

Cost convention (one op per scalar multiply, add or compare; a MAC is 2 ops): dot-product
terms computed, plus every overhead: SFMA statistics (``5*H*W`` per channel for mean and
variance, or ``2*H*W`` for max/min plus ``2*H*W`` per approximated channel for its mean)
and one compare per channel, one multiply and one add per approximated (channel, map)
pair; SDSS one compare per neighbour tested and ``n`` ops to average ``n`` neighbours;
SPET one compare per check made. Bias adds, BN and ReLU are not counted (nor in the dense
baseline). Terms are counted ``k*k`` per channel at every position, as the static count
does (zero-padding taps included).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dyve.dynamic.site import SiteResult

STATISTICS = ("variance", "range")


@dataclass(frozen=True)
class SiteKnobs:
    """The knob values of one site (None / False = off)."""

    spet: float | None = None
    exact: bool = False
    sdss: float | None = None
    sfma: float | None = None

    @property
    def active(self) -> bool:
        return (
            self.spet is not None or self.exact or self.sdss is not None or (self.sfma is not None)
        )


@dataclass(frozen=True)
class Geometry:
    """How the layer maps its input: a conv's stride/padding/dilation, or a linear layer."""

    linear: bool
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)

    @classmethod
    def of(cls, layer: nn.Module, name: str = "layer") -> Geometry:
        """The geometry of an ungrouped, zero-padded ``nn.Conv2d`` or of an ``nn.Linear``."""
        if isinstance(layer, nn.Linear):
            return cls(True)
        if not isinstance(layer, nn.Conv2d) or layer.groups != 1:
            raise ValueError(f"{name}: only ungrouped Conv2d and Linear layers have knobs")
        if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
            raise ValueError(f"{name}: only numeric zero padding is supported")
        return cls(False, pair(layer.stride), pair(layer.padding), pair(layer.dilation))


def pair(v: Any) -> tuple[int, int]:
    """``k`` or ``(kh, kw)`` as ``(kh, kw)`` (PyTorch's layer arguments)."""
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


@dataclass(frozen=True)
class Plan:
    """Per-site tensors derived once from the folded weights."""

    w: torch.Tensor  # [Cout, Cin, kh, kw]
    b: torch.Tensor  # [Cout]
    w_top: torch.Tensor  # w restricted to each filter's `checkpoint` largest-|w| terms
    w_exact_top: torch.Tensor  # those terms plus every positive one (combined mode)
    w_exact: torch.Tensor  # the positive terms only (exact mode alone)
    cnt_top: torch.Tensor  # [Cout, Cin] float64: terms of each channel in w_top
    cnt_exact_top: torch.Tensor
    cnt_exact: torch.Tensor
    wsum: torch.Tensor  # [Cout, Cin]: kernel sums for SFMA
    top_idx: torch.Tensor  # [Cout, m] int32: each filter's check terms, ascending (fast path)


def make_plan(w: torch.Tensor, b: torch.Tensor, checkpoint: float) -> Plan:
    """Order each filter's terms by |w| and build the check masks (see module docstring)."""
    w4 = w if w.dim() == 4 else w[:, :, None, None]
    cout, cin = w4.shape[:2]
    flat = w4.reshape(cout, -1)
    k = flat.shape[1]
    m = checkpoint_terms(checkpoint, k)
    idx = flat.abs().topk(m, dim=1).indices
    top = torch.zeros_like(flat, dtype=torch.bool)
    top.scatter_(1, idx, True)
    top = top.view_as(w4)
    pos = w4 > 0

    def counts(mask: torch.Tensor) -> torch.Tensor:
        return mask.reshape(cout, cin, -1).sum(-1).to(torch.float64)

    return Plan(
        w=w4.contiguous(),
        b=b.contiguous(),
        w_top=w4 * top,
        w_exact_top=w4 * (top | pos),
        w_exact=w4 * pos,
        cnt_top=counts(top),
        cnt_exact_top=counts(top | pos),
        cnt_exact=counts(pos),
        wsum=w4.sum((2, 3)).contiguous(),
        top_idx=idx.sort(dim=1).values.to(torch.int32).contiguous(),
    )


def checkpoint_terms(checkpoint: float, k: int) -> int:
    """Terms before the SPET check: a fraction of ``k`` (0 < c < 1) or a count (c >= 1)."""
    if checkpoint <= 0:
        raise ValueError(f"checkpoint must be > 0, got {checkpoint}")
    m = math.ceil(checkpoint * k) if checkpoint < 1 else int(checkpoint)
    return max(1, min(m, k))


@dataclass(frozen=True)
class Grid:
    """SDSS layout of an ``H x W`` map: each position's neighbourhood kind and size.

    Position ``(r, c)`` lies in cell ``(r // s, c // s)``; its neighbours are the cell's
    grid corners that exist: 2 on a grid row or column, 4 inside a cell, fewer at the far
    border. ``kind`` is 0 on the grid, 1 on a grid row, 2 on a grid column, 3 inside.
    """

    kind: torch.Tensor  # [H, W] int
    count: torch.Tensor  # [H, W] float: neighbours tested (0 on the grid)


@functools.lru_cache(maxsize=64)
def grid(h: int, w: int, stride: int) -> Grid:
    """The SDSS layout of an ``h x w`` map sampled every ``stride`` rows and columns."""
    r = torch.arange(h)
    c = torch.arange(w)
    on_r = (r % stride == 0)[:, None]
    on_c = (c % stride == 0)[None, :]
    has_down = ((r // stride + 1) * stride < h)[:, None]
    has_right = ((c // stride + 1) * stride < w)[None, :]
    kind = torch.where(on_r & ~on_c, 1, torch.where(~on_r & on_c, 2, torch.where(on_r, 0, 3)))
    count = torch.where(
        kind == 1,
        1 + has_right.long(),
        torch.where(kind == 2, 1 + has_down.long(), (1 + has_right.long()) * (1 + has_down.long())),
    )
    count = torch.where(kind == 0, 0, count).float()
    return Grid(kind, count)


def sdss_neighbourhood(
    out: torch.Tensor, relu: bool, stride: int
) -> tuple[torch.Tensor, torch.Tensor, Grid]:
    """Per position: max neighbour significance (inf on the grid), neighbour mean, layout."""
    ho, wo = out.shape[2:]
    lay = grid(ho, wo, stride)
    g = out[:, :, ::stride, ::stride]
    sig = g if relu else g.abs()
    ninf = float("-inf")

    def shifted(t: torch.Tensor, dim: int, fill: float) -> torch.Tensor:
        pad = [0, 1] if dim == 3 else [0, 0, 0, 1]  # one step right / down, filled beyond
        return F.pad(t, pad, value=fill).narrow(dim, 1, t.shape[dim])

    s_r, s_d = shifted(sig, 3, ninf), shifted(sig, 2, ninf)
    s_rd = shifted(s_r, 2, ninf)
    v_r, v_d = shifted(g, 3, 0.0), shifted(g, 2, 0.0)
    v_rd = shifted(v_r, 2, 0.0)
    # per cell: significance max and value sum of each neighbourhood kind
    top = (torch.maximum(sig, s_r), g + v_r)
    left = (torch.maximum(sig, s_d), g + v_d)
    inside = (torch.maximum(top[0], torch.maximum(s_d, s_rd)), top[1] + v_d + v_rd)

    def assemble(
        on: torch.Tensor, row: torch.Tensor, col: torch.Tensor, cell: torch.Tensor
    ) -> torch.Tensor:
        # full-resolution map from per-cell values: offset (0, 0) of a cell is the grid
        # point, (0, dc) lies on a grid row, (dr, 0) on a grid column, the rest inside
        first = torch.stack([on] + [row] * (stride - 1), dim=-1)
        other = torch.stack([col] + [cell] * (stride - 1), dim=-1)
        full = torch.stack([first] + [other] * (stride - 1), dim=3)
        n, c, hg, _, wg, _ = full.shape
        return full.reshape(n, c, hg * stride, wg * stride)[:, :, :ho, :wo]

    inf = torch.full_like(sig, float("inf"))
    nb_max = assemble(inf, top[0], left[0], inside[0])
    nb_sum = assemble(g, top[1], left[1], inside[1])
    return nb_max, nb_sum / lay.count.clamp(min=1).to(out.dtype), lay


def sfma_statistic(x: torch.Tensor, statistic: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample and input channel: the mean and the uniformity statistic, ``[N, C]`` each."""
    mean = x.mean((2, 3))
    if statistic == "variance":  # E[x^2] - mean^2: 5x faster than torch.var here
        return mean, (x.square().mean((2, 3)) - mean.square()).clamp(min=0)
    return mean, x.amax((2, 3)) - x.amin((2, 3))


def stat_ops(statistic: str, hw: int) -> tuple[int, int]:
    """(ops per channel tested, extra ops per approximated channel) of an SFMA statistic."""
    if statistic == "variance":
        return 5 * hw + 1, 0
    return 2 * hw + 2, 2 * hw


def run_site(
    x: torch.Tensor,
    plan: Plan,
    geom: Geometry,
    knobs: SiteKnobs,
    *,
    relu: bool,
    sdss_stride: int = 2,
    statistic: str = "variance",
    maps: dict[str, torch.Tensor] | None = None,
) -> SiteResult:
    """One layer's output (after the fused ReLU, if ``relu``) and its per-sample cost.

    With ``maps`` (a dict), also puts there, per sample, the share of output channels
    computed in full at each position, ``[N, Ho, Wo]`` under ``"computed"`` (0 where SDSS
    interpolated everything, lower where SPET stopped neurons), and the share of input
    channels SFMA approximated, ``[N]`` under ``"approximated"``: what a report draws.
    """
    n = x.shape[0]
    x4 = x.reshape(n, -1, 1, 1) if geom.linear else x
    cin, h, w = x4.shape[1:]
    cout, _, kh, kw = plan.w.shape
    k2 = kh * kw
    f64 = torch.float64
    overhead = torch.zeros(n, dtype=f64)
    n_approx = torch.zeros(n, dtype=f64)
    keep = None
    bias = plan.b.expand(n, cout)
    if knobs.sfma is not None:
        mean, stat = sfma_statistic(x4, statistic)
        approx = stat <= knobs.sfma
        keep = ~approx
        x4 = x4 * keep[:, :, None, None].to(x4.dtype)
        bias = bias + (approx.to(x4.dtype) * mean) @ plan.wsum.T
        n_approx = approx.sum(1).to(f64)
        per_channel, per_approx = stat_ops(statistic, h * w)
        overhead += cin * per_channel + n_approx * (per_approx + 2 * cout)

    def conv(weight: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x4, weight, None, geom.stride, geom.padding, geom.dilation)
        return out + bias[:, :, None, None]

    def terms(cnt: torch.Tensor) -> torch.Tensor:  # [N, Cout] check terms of exact channels
        return cnt.sum(1).expand(n, cout) if keep is None else keep.to(f64) @ cnt.T

    pre = conv(plan.w)
    ho, wo = pre.shape[2:]
    exact_terms = (cin - n_approx) * k2  # [N] terms of a neuron computed in full
    sfma_saved = 2 * n_approx * k2 * cout * ho * wo
    stop1 = torch.zeros(pre.shape, dtype=torch.bool)  # stopped at the predictive check
    stop2 = stop1  # stopped at the exact check
    checked2 = stop1
    t1 = t2 = exact_terms.view(n, 1)
    if knobs.spet is not None:
        stop1 = conv(plan.w_top) <= knobs.spet
        t1 = terms(plan.cnt_top)
    if knobs.exact:
        w2, cnt2 = (
            (plan.w_exact_top, plan.cnt_exact_top)
            if knobs.spet is not None
            else (plan.w_exact, plan.cnt_exact)
        )
        nonneg = x4.flatten(1).amin(1) >= 0  # exact only when the inputs cannot be negative
        checked2 = nonneg.view(n, 1, 1, 1) & ~stop1
        stop2 = checked2 & (conv(w2) <= 0)
        t2 = terms(cnt2)
    out = torch.where(stop1 | stop2, torch.zeros((), dtype=pre.dtype), pre)
    if relu:
        out = torch.relu(out)
    interp = torch.zeros(pre.shape, dtype=torch.bool)
    sdss_ops = torch.zeros(n, dtype=f64)
    if knobs.sdss is not None and ho * wo > 1 and not geom.linear:
        nb_max, nb_mean, lay = sdss_neighbourhood(out, relu, sdss_stride)
        interp = nb_max <= knobs.sdss
        out = torch.where(interp, nb_mean, out)
        # one compare per neighbour tested, n ops to average n neighbours
        tested = cout * float(lay.count.sum())
        sdss_ops += tested + (interp * lay.count).sum((1, 2, 3), dtype=f64)
    computed = ~interp

    def count(mask: torch.Tensor) -> torch.Tensor:  # [N, Cout] computed neurons in `mask`
        return (mask & computed).sum((2, 3)).to(f64)

    n_stop1, n_stop2, n_comp = count(stop1), count(stop2), computed.sum((2, 3)).to(f64)
    full = exact_terms.view(n, 1)
    macs = (full * (n_comp - n_stop1 - n_stop2) + t1 * n_stop1 + t2 * n_stop2).sum(1)
    spet_ops = (n_comp.sum(1) if knobs.spet is not None else 0) + count(checked2).sum(1)
    overhead += spet_ops + sdss_ops
    n_interp = interp.sum((1, 2, 3)).to(f64)
    sdss_saved = 2 * exact_terms * n_interp
    spet_saved = 2 * ((full - t1) * n_stop1).sum(1)
    exact_saved = 2 * ((full - t2) * n_stop2).sum(1)
    n_stopped = (n_stop1 + n_stop2).sum(1)
    changed = (n_approx > 0) | (n_stopped > 0) | (n_interp > 0)
    if maps is not None:
        maps["computed"] = (computed & ~(stop1 | stop2)).float().mean(1)
        maps["approximated"] = n_approx / cin
    if geom.linear:
        out = out.reshape(n, cout)
    return SiteResult(
        out=out,
        macs=macs,
        scalar_ops=2 * macs + overhead,
        changed=changed,
        parts={
            "sfma_saved": sfma_saved,
            "sdss_saved": sdss_saved,
            "spet_saved": spet_saved,
            "exact_saved": exact_saved,
            "overhead": overhead,
            "stopped": n_stopped,
            "interpolated": n_interp,
            "channels_approximated": n_approx,
        },
    )
