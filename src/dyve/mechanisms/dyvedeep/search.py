"""DyVEDeep's greedy threshold search (step 2 of :mod:`.calibrate`).

Profile every site on held-out images, then repeatedly take the (site, knob) step with the
largest saving (scalar ops, or the site's measured native time) per unit of estimated
output damage, each candidate tried on its own site. The time search ranks candidates by
the site's kernel timed alone, and accepts a step only when the site, timed inside the
whole-network program against its current setting (:mod:`.clock`), saves
:data:`MIN_PROGRAM_SAVING` of its time; a refused setting is not tried again. The
returned trajectory runs from every knob off to the most aggressive setting; verification
on whole splits is :mod:`.calibrate`'s.
"""

from __future__ import annotations

import heapq
import warnings
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from dyve.data.core import ImageSet
from dyve.data.loader import Normalization, batches
from dyve.dynamic.net import DynamicNet
from dyve.mechanisms.dyvedeep.clock import ProgramClock
from dyve.mechanisms.dyvedeep.kernel import SiteKnobs
from dyve.mechanisms.dyvedeep.mechanism import DyVEDeep
from dyve.mechanisms.dyvedeep.profile import capture, sensitivities, site_profile

if TYPE_CHECKING:
    from dyve.mechanisms.dyvedeep.calibrate import CalibrationConfig

GRID_KNOBS = ("spet", "sdss", "sfma")  # threshold knobs; spet_exact is on/off per site
#: in the time search, a candidate must save this share of its site's time alone (ranking)
MIN_TIME_SAVING = 0.01
#: ... and a step this share of the site's time in the program (acceptance): the program
#: clock's A/A comparisons spread by about 1.5 % (one standard deviation) on a quiet machine
MIN_PROGRAM_SAVING = 0.03


def greedy(
    net: DynamicNet,
    mech: DyVEDeep,
    calib: ImageSet,
    norm: Normalization,
    cfg: CalibrationConfig,
    progress: bool,
) -> list[dict[str, Any]]:
    """Profile the sites and run the greedy search; returns the trajectory."""
    from tqdm import tqdm

    sites = list(mech.ops)
    gen = torch.Generator().manual_seed(cfg.seed)
    idx = torch.randperm(len(calib), generator=gen)[: cfg.profile_images].numpy()
    x, _ = next(batches(calib, len(idx), norm, indices=idx))
    inputs = capture(net, x, sites)
    prof = {}
    for s in tqdm(sites, desc="profile sites", disable=not progress, leave=False):
        prof[s] = site_profile(mech, net.sites[s], inputs[s], cfg.levels)
    sens = sensitivities(net, x, sites, seed=cfg.seed)
    for s, v in sens.items():
        prof[s].sensitivity = v
    baseline = 2.0 * net.static_macs
    trajectory: list[dict[str, Any]] = []
    for s in mech.eligible["spet_exact"]:
        prof[s].grids["spet_exact"] = [1.0]  # one level: on (it costs a compare per neuron)
    level = {s: dict.fromkeys(prof[s].grids, -1) for s in sites}

    def knobs_at(s: str, lv: dict[str, int]) -> SiteKnobs:
        g = prof[s].grids
        t = {k: (g[k][lv[k]] if lv.get(k, -1) >= 0 else None) for k in (*GRID_KNOBS, "spet_exact")}
        return SiteKnobs(
            spet=t["spet"], exact=t["spet_exact"] is not None, sdss=t["sdss"], sfma=t["sfma"]
        )

    timed = cfg.cost == "time"
    # the time search accepts a step on the site's time inside the program (see .clock)
    clock = _program_clock(net, mech, x) if timed else None
    refused: dict[str, set[SiteKnobs]] = {s: set() for s in sites}

    def local(s: str, lv: dict[str, int]) -> tuple[float, float, float]:
        """(cost, estimated damage, scalar ops) of the levels ``lv`` at site ``s``."""
        knobs = knobs_at(s, lv)
        ops, err = prof[s].try_knobs(mech, net.sites[s], knobs)
        cost = prof[s].time_knobs(mech, net.sites[s], knobs) if timed else ops
        return cost, err * prof[s].sensitivity, ops

    current = {s: local(s, level[s]) for s in sites}
    dense_ops = {s: 2.0 * net.sites[s].macs for s in sites}  # knobs off: 2 ops per MAC
    # the least saving a step must make: none for ops, a share of the dense time for time
    floor = {s: MIN_TIME_SAVING * current[s][0] if timed else 0.0 for s in sites}
    version = dict.fromkeys(sites, 0)
    heap: list[tuple[float, int, str, str, int, tuple[float, float, float]]] = []

    def push(s: str) -> None:
        for k, grid in prof[s].grids.items():
            if k not in cfg.knobs:
                continue
            # the next level; the time search looks at every higher one (a check pass
            # costs time until enough neurons stop: SPET's first levels run slower)
            ahead = range(level[s][k] + 1, len(grid) if timed else min(level[s][k] + 2, len(grid)))
            best = None
            for lv in ahead:
                lvs = {**level[s], k: lv}
                if timed:  # the timing (cached) first: no emulation for a setting that is slower
                    if replace(knobs_at(s, lvs), exact=False) in refused[s]:
                        continue
                    t = prof[s].time_knobs(mech, net.sites[s], knobs_at(s, lvs))
                    if current[s][0] - t <= floor[s]:
                        continue
                cand = local(s, lvs)
                saved = current[s][0] - cand[0]
                if saved <= floor[s]:
                    continue
                ratio = saved / max(cand[1] - current[s][1], 1e-12)
                if best is None or ratio > best[0]:
                    best = (ratio, lv, cand)
            if best is not None:
                heapq.heappush(heap, (-best[0], version[s], s, k, best[1], best[2]))

    for s in sites:
        push(s)
    est_ops = baseline + sum(current[s][2] - dense_ops[s] for s in sites)
    # every site dense (time search only): in the program, or alone without one
    dense_us = clock.total_us() if clock is not None else sum(current[s][0] for s in sites)
    est_cost = dense_us
    damage = sum(current[s][1] for s in sites)
    bar = tqdm(desc="greedy search", disable=not progress, leave=False)
    while heap:
        _, ver, s, k, lv, cand = heapq.heappop(heap)
        if ver != version[s]:
            continue
        version[s] += 1
        if clock is not None:  # measured where it runs, against the site's current setting
            now, new = knobs_at(s, level[s]), knobs_at(s, {**level[s], k: lv})
            t_now, t_new = clock.compare(s, now, new)
            if t_now - t_new <= MIN_PROGRAM_SAVING * t_now:
                refused[s].add(replace(new, exact=False))
                push(s)
                continue
            clock.set(s, new)
            est_cost += t_new - t_now
        elif timed:
            est_cost += cand[0] - current[s][0]
        level[s][k] = lv
        est_ops += cand[2] - current[s][2]
        damage += cand[1] - current[s][1]
        current[s] = cand
        step = {
            "knob": k,
            "site": s,
            "level": level[s][k],
            "threshold": prof[s].grids[k][level[s][k]],
            "est_ops": est_ops,
            "damage": damage,
        }
        if timed:  # the sites' time (in the program where it lowers), us per image
            step.update(est_us=est_cost, est_time_reduction=dense_us / est_cost)
        trajectory.append(step)
        push(s)
        bar.update()
    bar.close()
    return trajectory


def _program_clock(net: DynamicNet, mech: DyVEDeep, x: torch.Tensor) -> ProgramClock | None:
    """The program clock, or None (with a warning) when the network does not lower to a
    program: the search then accepts steps on the sites' times alone."""
    from dyve.mechanisms.dyvedeep.lower import Unsupported

    try:
        return ProgramClock(net, mech, x)
    except Unsupported as exc:
        warnings.warn(
            f"dyvedeep: the network does not run as one native program ({exc}); the time "
            "search accepts steps on each site's kernel timed alone, which overstates "
            "light settings (see dyve.mechanisms.dyvedeep.clock)",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
