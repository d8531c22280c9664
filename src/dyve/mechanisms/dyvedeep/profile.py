"""What calibration learns about each site from a few held-out images, before searching.

* the site's input on ``P`` profile images (stored, so a candidate setting of one site can be
  tried on that site alone, in milliseconds);
* per knob, a grid of thresholds from off to aggressive: quantiles of the statistic the knob
  compares (SPET: partial sums at the checkpoint; SDSS: the neighbours' significance;
  SFMA: the channels' uniformity statistic), so level ``q`` acts on about a share ``q`` of
  the neurons / positions / channels;
* its *sensitivity*: how much the network's output distribution moves (KL divergence from
  the dense output) per unit of relative squared error injected at the site's output, with
  Gaussian noise. A local error times the sensitivity estimates the knob's effect on the
  output, which makes errors at different sites comparable;
* on request, the *measured time* of a setting: the site's native kernel (the one the fast
  back-end's program runs) on the stored inputs, one thread. It ranks the time search's
  candidates; it is biased for light settings and noisy
  (``python benchmarks/site_clock.py``), so a step is accepted on the site's time inside
  the program (:mod:`.clock`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from dyve.dynamic.net import DynamicNet
from dyve.dynamic.site import SiteUnit
from dyve.eval.latency import num_threads
from dyve.mechanisms.dyvedeep import native
from dyve.mechanisms.dyvedeep.kernel import (
    SiteKnobs,
    run_site,
    sdss_neighbourhood,
    sfma_statistic,
)
from dyve.mechanisms.dyvedeep.mechanism import DyVEDeep, DyVEDeepOp

QUANTILE_SAMPLES = 1 << 20  # torch.quantile takes at most 2**24 values; this is plenty
TIME_REPEATS = 3  # timed calls per setting (the fastest counts), after one warm-up call
TIME_IMAGES = 64  # stored inputs a setting is timed on


@dataclass
class SiteProfile:
    """One site's stored inputs, dense output, threshold grids and sensitivity."""

    name: str
    inputs: torch.Tensor
    dense: torch.Tensor  # the site's dense (fused) output on ``inputs``
    grids: dict[str, list[float]]
    sensitivity: float = 0.0
    #: measured microseconds per image of each setting tried (see :meth:`time_knobs`)
    times: dict[SiteKnobs, float] = field(default_factory=dict, repr=False)
    _fast: native.FastSite | None = field(default=None, repr=False)

    def try_knobs(self, mech: DyVEDeep, unit: SiteUnit, knobs: SiteKnobs) -> tuple[float, float]:
        """(mean scalar ops per sample, relative squared error) of ``knobs`` at this site."""
        op = mech.ops[self.name]
        cfg = mech.config
        res = run_site(
            self.inputs,
            op.plan(unit),
            op.geom,
            knobs,
            relu=unit.relu,
            sdss_stride=cfg.sdss_stride,
            statistic=cfg.sfma_statistic,
        )
        err = float((res.out - self.dense).square().sum()) / max(
            float(self.dense.square().sum()), 1e-30
        )
        return float(res.scalar_ops.mean()), err

    def time_knobs(self, mech: DyVEDeep, unit: SiteUnit, knobs: SiteKnobs) -> float:
        """Microseconds per image of ``knobs`` at this site: the native kernel on the first
        :data:`TIME_IMAGES` stored inputs, one thread, the fastest of :data:`TIME_REPEATS`
        calls (after a warm-up).

        Cached per setting. SPET's exact check is left out, as the fast back-end leaves it
        out (lossless, it does not pay). Needs the native kernels (:func:`native.kernels`).
        """
        knobs = replace(knobs, exact=False)
        if knobs not in self.times:
            op = mech.ops[self.name]
            if self._fast is None:
                self._fast = native.FastSite(op.plan(unit), op.geom)
            cfg = mech.config
            x = self.inputs[:TIME_IMAGES]
            best = float("inf")
            with num_threads(1):
                for r in range(TIME_REPEATS + 1):
                    t0 = time.perf_counter()
                    self._fast.run(
                        x,
                        knobs,
                        relu=unit.relu,
                        sdss_stride=cfg.sdss_stride,
                        statistic=cfg.sfma_statistic,
                    )
                    if r:
                        best = min(best, time.perf_counter() - t0)
            self.times[knobs] = best * 1e6 / x.shape[0]
        return self.times[knobs]


@torch.no_grad()
def capture(net: DynamicNet, x: torch.Tensor, sites: list[str]) -> dict[str, torch.Tensor]:
    """Each site's input when ``net`` runs on ``x`` with its current knobs."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for s in sites:

        def hook(_m: nn.Module, args: tuple[torch.Tensor, ...], s: str = s) -> None:
            seen[s] = args[0].detach().clone()

        handles.append(net.sites[s].register_forward_pre_hook(hook))
    try:
        net(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def quantile_grid(values: torch.Tensor, levels: tuple[float, ...], seed: int = 0) -> list[float]:
    """Distinct thresholds at the ``levels`` quantiles of ``values``, ascending."""
    v = values.detach().flatten().double()
    v = v[torch.isfinite(v)]
    if v.numel() == 0:
        return []
    if v.numel() > QUANTILE_SAMPLES:
        g = torch.Generator().manual_seed(seed)
        v = v[torch.randint(v.numel(), (QUANTILE_SAMPLES,), generator=g)]
    q = torch.quantile(v, torch.tensor(levels, dtype=torch.float64))
    return sorted({float(t) for t in q})


def site_profile(
    mech: DyVEDeep, unit: SiteUnit, x: torch.Tensor, levels: tuple[float, ...]
) -> SiteProfile:
    """Dense output and threshold grids of one site from its stored inputs ``x``."""
    op: DyVEDeepOp = mech.ops[unit.name]
    plan = op.plan(unit)
    cfg = mech.config
    dense = run_site(x, plan, op.geom, SiteKnobs(), relu=unit.relu).out
    grids: dict[str, list[float]] = {}
    eligible = {k for k, sites in mech.eligible.items() if unit.name in sites}
    x4 = x.reshape(x.shape[0], -1, 1, 1) if op.geom.linear else x
    if "spet" in eligible:
        g = op.geom
        partial = F.conv2d(x4, plan.w_top, plan.b, g.stride, g.padding, g.dilation)
        grids["spet"] = quantile_grid(partial, levels)
    if "sdss" in eligible:
        nb_max, _, _ = sdss_neighbourhood(dense, unit.relu, cfg.sdss_stride)
        grids["sdss"] = quantile_grid(nb_max, levels)
    if "sfma" in eligible:
        grids["sfma"] = quantile_grid(sfma_statistic(x4, cfg.sfma_statistic)[1], levels)
    return SiteProfile(unit.name, x, dense, grids)


def _fused_output_module(net: DynamicNet, unit: SiteUnit) -> nn.Module:
    """The module whose output is the site's fused output (its last tail, or the layer)."""
    for role in ("act", "bn"):
        if role in unit.tails:
            return unit.tails[role]
    return unit


@torch.no_grad()
def sensitivities(
    net: DynamicNet, x: torch.Tensor, sites: list[str], eps: float = 0.1, seed: int = 0
) -> dict[str, float]:
    """Per site: KL(dense || noisy) of the outputs per unit of injected relative error."""
    dense = F.log_softmax(net(x), dim=1)
    out: dict[str, float] = {}
    for i, s in enumerate(sites):
        gen = torch.Generator().manual_seed(seed + i)

        def noisy(
            _m: nn.Module, _a: object, y: torch.Tensor, gen: torch.Generator = gen
        ) -> torch.Tensor:
            rms = y.square().mean().sqrt()
            return y + eps * rms * torch.randn(y.shape, generator=gen, dtype=y.dtype)

        handle = _fused_output_module(net, net.sites[s]).register_forward_hook(noisy)
        try:
            logp = F.log_softmax(net(x), dim=1)
        finally:
            handle.remove()
        kl = float(F.kl_div(logp, dense, log_target=True, reduction="batchmean"))
        out[s] = max(kl, 0.0) / eps**2
    return out
