"""Training-free calibration of DyVEDeep's per-layer thresholds to an accuracy budget.

Faithful in spirit to the paper's per-layer tuning on held-out data (its exact search was
not published; ``docs/methods/dyvedeep.md``):

1. **Profile** (:mod:`.profile`): on ``profile_images`` held-out images, store each site's
   input, grid its thresholds by quantiles, and measure its sensitivity.
2. **Greedy search**: switch on the lossless exact SPET check everywhere, then repeatedly
   take the (site, knob) step to the next threshold with the largest op saving per unit of
   estimated output damage (local relative error x sensitivity), each candidate tried on
   its own site in milliseconds. The whole trajectory, off to most aggressive, is logged.
3. **Verification**: points of the trajectory are run on the whole calibration split
   (bisection for the last point within the budget, plus points around it), giving the
   accuracy-versus-ops curve; the operating point is the cheapest verified point within
   the budget (or the first reaching ``target_reduction``).

``cost="time"`` makes the search save *time* on this machine instead of scalar operations:
a candidate's cost is its site's measured time in the native kernel
(:meth:`.profile.SiteProfile.time_knobs`); a step may jump to any higher level of a knob
(a check pass costs time until enough neurons stop, so SPET's first levels run slower than
off) and must save at least :data:`MIN_TIME_SAVING` of the site's dense time; the
operating point is the verified point within the budget with the least estimated time.
Settings that compute less but run slower on this CPU (SPET's check pass, SDSS below
about half the neurons interpolated) are never taken. The result depends on
the machine, which is recorded.

State is written after each phase and each verified point, so an interrupted run resumes.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from dyve._io import jsonable, read_json, write_json
from dyve.data.core import ImageSet
from dyve.data.loader import Normalization, batches
from dyve.dynamic.net import DynamicNet
from dyve.errors import DyveError
from dyve.eval.latency import machine
from dyve.eval.measure import Measurement, measure_sharded
from dyve.mechanisms.dyvedeep import native
from dyve.mechanisms.dyvedeep.kernel import SiteKnobs
from dyve.mechanisms.dyvedeep.mechanism import KNOBS, DyVEDeep
from dyve.mechanisms.dyvedeep.profile import capture, sensitivities, site_profile
from dyve.train.dist import Dist

STATE = "calibration.json"
GRID_KNOBS = ("spet", "sdss", "sfma")  # threshold knobs; spet_exact is on/off per site
COSTS = ("ops", "time")
#: in the time search, a step must save this share of its site's dense time (timing noise)
MIN_TIME_SAVING = 0.01


@dataclass(frozen=True)
class CalibrationConfig:
    """What the calibration searches and under which budget."""

    #: top-1 loss allowed on the calibration split, in percentage points
    budget_pp: float = 0.5
    #: instead of the budget: stop at the first verified point with this op reduction
    target_reduction: float | None = None
    #: knobs the search may use
    knobs: tuple[str, ...] = KNOBS
    #: quantile levels of each knob's threshold grid
    levels: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    profile_images: int = 256
    #: extra verified points around the operating point, for the curve
    curve_points: int = 6
    batch_size: int = 250
    seed: int = 0
    #: what the search saves: scalar operations, or measured time on this machine
    cost: str = "ops"

    def __post_init__(self) -> None:
        if self.cost not in COSTS:
            raise ValueError(f"cost must be one of {COSTS}, got {self.cost!r}")
        unknown = set(self.knobs) - set(KNOBS)
        if unknown:
            raise ValueError(f"unknown knobs {sorted(unknown)}; known: {KNOBS}")
        if not self.budget_pp >= 0:
            raise ValueError(f"budget_pp must be >= 0, got {self.budget_pp}")
        if self.target_reduction is not None and not self.target_reduction > 1:
            raise ValueError(f"target_reduction must be > 1, got {self.target_reduction}")
        if self.profile_images < 1:
            raise ValueError("profile_images must be >= 1")


@dataclass
class Calibration:
    """The search's record: trajectory, verified points, and the chosen step."""

    config: dict[str, Any]
    dense: dict[str, float]
    trajectory: list[dict[str, Any]] = field(default_factory=list)
    #: step index (as a string, for JSON) -> top1, scalar_ops_mean, macs_mean
    evaluations: dict[str, dict[str, float]] = field(default_factory=dict)
    chosen: int | None = None
    #: the machine the time search measured on (``cost="time"`` only)
    machine: dict[str, Any] | None = None

    def knob_values(self, step: int) -> dict[str, Any]:
        """Every knob's per-site values after ``step`` steps of the trajectory."""
        values: dict[str, dict[str, Any]] = {k: {} for k in KNOBS}
        for s in self.trajectory[: step + 1]:
            on = s["knob"] == "spet_exact"
            values[s["knob"]][s["site"]] = True if on else s["threshold"]
        return values

    def curve(self) -> list[dict[str, Any]]:
        """Verified points, cheapest last: step, top1, loss, ops and reduction."""
        pts = []
        for k, e in sorted(self.evaluations.items(), key=lambda t: int(t[0])):
            pts.append(
                {
                    "step": int(k),
                    **e,
                    "loss_pp": self.dense["top1"] - e["top1"],
                    "op_reduction": self.dense["scalar_ops_mean"] / e["scalar_ops_mean"],
                    **_pick(self.trajectory[int(k)], "est_us", "est_time_reduction"),
                }
            )
        return pts


def _greedy(
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
    dense_us = sum(current[s][0] for s in sites)  # every site dense (time search only)
    est_cost = dense_us
    damage = sum(current[s][1] for s in sites)
    bar = tqdm(desc="greedy search", disable=not progress, leave=False)
    while heap:
        _, ver, s, k, lv, cand = heapq.heappop(heap)
        if ver != version[s]:
            continue
        level[s][k] = lv
        version[s] += 1
        est_ops += cand[2] - current[s][2]
        est_cost += cand[0] - current[s][0]
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
        if timed:  # the sites' measured time, microseconds per image
            step.update(est_us=est_cost, est_time_reduction=dense_us / est_cost)
        trajectory.append(step)
        push(s)
        bar.update()
    bar.close()
    return trajectory


def calibrate(
    net: DynamicNet,
    calib: ImageSet,
    norm: Normalization,
    cfg: CalibrationConfig = CalibrationConfig(),
    *,
    state_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = lambda _m: None,
    ddp: Dist | None = None,
) -> Calibration:
    """Search DyVEDeep's thresholds on ``calib`` and leave ``net`` at the chosen point.

    Under ``torchrun`` (``ddp``), every evaluation on ``calib`` is split over the
    processes (:func:`~dyve.eval.measure.measure_sharded`), rank 0 makes the greedy
    trajectory and sends it to the others, and only rank 0 writes the state file; every
    process ends at the same point.

    Example:
        >>> net = dyve.equip(model, DyVEDeep())  # doctest: +SKIP
        >>> cal = calibrate(net, load_images("cifar10-jpeg", "val"), CIFAR_NORM)  # doctest: +SKIP
        >>> net.knobs(), cal.curve()  # doctest: +SKIP
    """
    mech = net.mechanism("dyvedeep")
    assert isinstance(mech, DyVEDeep)
    if cfg.cost == "time" and native.kernels() is None:
        raise DyveError(
            "dyvedeep: the time search measures the native kernels, which are unavailable "
            "here (see the warning); use the default cost (scalar operations)"
        )
    ddp = ddp or Dist()
    state_path = Path(state_dir) / STATE if state_dir is not None else None
    cfg_dict = {**asdict(cfg), "dataset": calib.name, "split": calib.split, "n": len(calib)}
    cal = _resume(state_path, cfg_dict)
    for k, v in mech.off_knobs().items():
        mech.set_knob(k, v)

    def run(what: str) -> Measurement:
        return measure_sharded(
            net, calib, norm, ddp, batch_size=cfg.batch_size, progress=progress, desc=what
        )

    if cal is None:
        m = run("dense")
        dense = {"top1": m.top1, "scalar_ops_mean": m.scalar_ops_mean, "macs_mean": m.macs_mean}
        cal = Calibration(cfg_dict, dense)

    def save() -> None:
        if state_path is not None and ddp.main:
            write_json(state_path, asdict(cal))

    save()
    if not cal.trajectory:
        if ddp.main:
            cal.trajectory = _greedy(net, mech, calib, norm, cfg, progress)
            cal.machine = machine() if cfg.cost == "time" else None
        cal.trajectory = ddp.broadcast(cal.trajectory)
        save()
    if not ddp.main:
        log = _quiet
    log(f"greedy search: {len(cal.trajectory)} steps; verifying on {calib.name}/{calib.split}")

    def verify(step: int) -> dict[str, float]:
        key = str(step)
        if key not in cal.evaluations:
            apply_knobs(mech, cal.knob_values(step))
            m = run(f"step {step}")
            cal.evaluations[key] = {
                "top1": m.top1,
                "scalar_ops_mean": m.scalar_ops_mean,
                "macs_mean": m.macs_mean,
            }
            save()
            red = cal.dense["scalar_ops_mean"] / m.scalar_ops_mean
            t = cal.trajectory[step].get("est_time_reduction")
            est = f", sites' time est. {t:.2f}x less" if t is not None else ""
            log(f"  step {step}: top-1 {m.top1:.2f} %, {red:.2f}x fewer scalar ops{est}")
        return cal.evaluations[key]

    def ok(step: int) -> bool:
        e = verify(step)
        if cfg.target_reduction is not None:
            return cal.dense["scalar_ops_mean"] / e["scalar_ops_mean"] < cfg.target_reduction
        return cal.dense["top1"] - e["top1"] <= cfg.budget_pp

    last = len(cal.trajectory) - 1
    if last < 0 and cfg.cost == "time":
        raise DyveError("dyvedeep: no knob setting saves time at any site on this machine")
    if last < 0:
        raise DyveError("dyvedeep: no site of this network takes the chosen knobs")
    lo, hi = 0, last + 1  # invariant: ok(lo), and not ok(hi) (beyond the trajectory)
    if not ok(0):
        hi = 0
    elif ok(last):
        lo = hi = last
    tol = max(1, (last + 1) // 256)
    while hi - lo > tol:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    if cfg.target_reduction is not None and hi <= last:
        lo = hi  # the first step that reaches the target
    anchor = max(lo, 1)
    for f in _spread(cfg.curve_points):
        verify(min(last, max(0, round(anchor * f))))
    cal.chosen = _choose(cal, cfg)
    save()
    apply_knobs(mech, cal.knob_values(cal.chosen) if cal.chosen is not None else {})
    return cal


def _quiet(_msg: str) -> None:
    """The log of processes other than rank 0."""


def _spread(n: int) -> list[float]:
    """Multiples of the operating step for the curve: below it and beyond it."""
    below = [i / (n // 2 + 1) for i in range(1, n // 2 + 1)]
    above = [1 + 0.15 * i for i in range(1, n - len(below) + 1)]  # accuracy falls fast there
    return below + above


def _choose(cal: Calibration, cfg: CalibrationConfig) -> int | None:
    """The first point reaching the target, or the cheapest within the budget: the least
    scalar ops, or (time search) the least estimated time."""
    pts = cal.curve()
    if cfg.target_reduction is not None:
        hit = [p for p in pts if p["op_reduction"] >= cfg.target_reduction]
        return min(hit, key=lambda p: p["step"])["step"] if hit else None
    ok = [p for p in pts if p["loss_pp"] <= cfg.budget_pp]
    cost = "est_us" if cfg.cost == "time" else "scalar_ops_mean"
    return min(ok, key=lambda p: p[cost])["step"] if ok else None


def _pick(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    """The entries of ``d`` named by ``keys`` that it has."""
    return {k: d[k] for k in keys if k in d}


def apply_knobs(mech: DyVEDeep, values: dict[str, Any]) -> None:
    """Set every knob from ``values`` (as :meth:`Calibration.knob_values` gives); absent = off."""
    for k in KNOBS:
        mech.set_knob(k, values.get(k) or mech.off_knobs()[k])


def _resume(path: Path | None, cfg_dict: dict[str, Any]) -> Calibration | None:
    if path is None or not path.exists():
        return None
    d = read_json(path)
    saved = dict(d.get("config", {}))
    saved.setdefault("cost", "ops")  # states written before the time search existed
    if saved != jsonable(cfg_dict):
        raise DyveError(
            f"{path} holds a calibration with other settings; use another --out or delete it"
        )
    return Calibration(
        config=d["config"],
        dense=d["dense"],
        trajectory=d.get("trajectory", []),
        evaluations=d.get("evaluations", {}),
        chosen=d.get("chosen"),
        machine=d.get("machine"),
    )
