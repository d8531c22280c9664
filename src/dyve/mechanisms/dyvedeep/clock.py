"""A site's time inside the whole-network program: what the time search accepts a step on.

The time search (``dyve dyvedeep calibrate --cost time``) ranks candidate settings by the
time of each site's kernel run alone on stored inputs (:meth:`.profile.SiteProfile.time_knobs`:
milliseconds per setting, so every level of every knob can be tried). Two things make that
estimate unfit to *accept* a step on:

* a site alone is not the site in the program: alone, SFMA's light settings looked 3-9 %
  faster than dense while in the program the same settings ran 0-3 % slower (its
  statistic and channel tables cost about what a few dropped channels save;
  ``python benchmarks/site_clock.py --point time``);
* the search takes the best of many noisy measurements (every level of every knob, at every
  site), so a setting that measured faster by chance is taken, and the estimates add up
  the luck: on ResNet-56 the estimate said 1.18x less site time where the program ran
  0.98x (benchmarks/NOTES.md, session 17).

:class:`ProgramClock` keeps one program of the network (batch-1 order: one sample runs all
its ops before the next, one thread) and measures a step where it will run: the site's op
at the current setting and at the candidate, on the same images, interleaved over rounds
(the order alternating), the median of the rounds. The other sites stay at their accepted
settings, so each site is timed on the inputs it will see.
"""

from __future__ import annotations

import statistics
from dataclasses import replace

import torch

from dyve.dynamic.net import DynamicNet
from dyve.eval.latency import num_threads
from dyve.mechanisms.dyvedeep.kernel import SiteKnobs
from dyve.mechanisms.dyvedeep.mechanism import DyVEDeep
from dyve.mechanisms.dyvedeep.native import FastSite

#: images each timed call runs (one sample after another)
CLOCK_IMAGES = 16
#: interleaved rounds per comparison (current, candidate; the order alternates)
CLOCK_ROUNDS = 5


class ProgramClock:
    """One program of ``net`` at its current knobs, whose sites can be set one by one."""

    def __init__(self, net: DynamicNet, mech: DyVEDeep, x: torch.Tensor) -> None:
        from dyve.mechanisms.dyvedeep.program import Program  # imports the mechanism

        self.x = x[:CLOCK_IMAGES].contiguous()
        self.prog = Program(net.backbone, self.x[:1], mech.site_options)
        self.prog.group = 1  # batch-1 order: each sample runs all its ops before the next
        self._at: dict[str, int] = {}  # site -> index of its op
        self._sites: dict[str, FastSite] = {}
        for k, op in enumerate(self.prog._ops):
            if op["site"] is not None:
                self._at[str(op["node"].target)] = k
                self._sites[str(op["node"].target)] = op["site"]

    def knobs(self, site: str) -> SiteKnobs | None:
        """The setting ``site`` runs in the program."""
        return self._sites[site].knobs

    def set(self, site: str, knobs: SiteKnobs) -> None:
        """Run ``site`` with ``knobs`` from now on (SPET's exact check is the emulation's)."""
        self._sites[site].set_knobs(replace(knobs, exact=False))

    def _site_us(self, site: str) -> float:
        seconds = torch.zeros(len(self.prog._ops), dtype=torch.float64)
        self.prog.run(self.x, seconds)
        return float(seconds[self._at[site]]) * 1e6 / self.x.shape[0]

    def compare(self, site: str, current: SiteKnobs, candidate: SiteKnobs) -> tuple[float, float]:
        """Microseconds per image of ``site`` at ``current`` and at ``candidate`` (the
        medians of :data:`CLOCK_ROUNDS` interleaved rounds); leaves ``site`` at ``current``."""
        a: list[float] = []
        b: list[float] = []
        try:
            with torch.no_grad(), num_threads(1):
                for r in range(CLOCK_ROUNDS):
                    for knobs, out in ((current, a), (candidate, b))[:: 1 if r % 2 else -1]:
                        self.set(site, knobs)
                        out.append(self._site_us(site))
        finally:
            self.set(site, current)
        ratio = statistics.median(y / x for x, y in zip(a, b, strict=True))
        return statistics.median(a), statistics.median(a) * ratio

    def total_us(self) -> float:
        """Microseconds per image of every site at its current setting (median of rounds)."""
        times = []
        with torch.no_grad(), num_threads(1):
            for _ in range(CLOCK_ROUNDS):
                seconds = torch.zeros(len(self.prog._ops), dtype=torch.float64)
                self.prog.run(self.x, seconds)
                times.append(sum(float(seconds[k]) for k in self._at.values()))
        return statistics.median(times) * 1e6 / self.x.shape[0]
