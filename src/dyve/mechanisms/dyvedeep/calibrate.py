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
   the budget (or the first reaching ``target_reduction``). With ``confidence`` (default
   0.9) a point is within the budget when the one-sided upper confidence bound of its
   paired loss against the dense network is (:mod:`dyve.eval.paired`): the cheapest
   point whose plain loss passes is chosen among noisy estimates and loses more on unseen
   images. The ``rule`` widens that bound for the points compared (Bonferroni over
   :meth:`Calibration.family` points, by default) in the bisection and in the choice
   alike (:func:`dyve.eval.paired.choose`).

``cost="time"`` makes the search save *time* on this machine instead of scalar operations:
candidates are ranked by their site's measured time in the native kernel alone
(:meth:`.profile.SiteProfile.time_knobs`); a step may jump to any higher level of a knob
(a check pass costs time until enough neurons stop, so SPET's first levels run slower than
off) and is accepted only when the site, timed inside the whole-network program, saves
:data:`.search.MIN_PROGRAM_SAVING` of its time (:mod:`.clock`); the operating point is
the verified point within the budget with the least time in the program's sites.
Settings that compute less but run slower on this CPU (SPET's check pass, SDSS below
about half the neurons interpolated) are never taken. The result depends on
the machine, which is recorded.

State is written after each phase and each verified point, so an interrupted run resumes;
a run resumed with other verification settings (:data:`VERIFY_KEYS`) keeps its search and
its verified points.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dyve._io import jsonable, read_json, write_json
from dyve.data.core import ImageSet
from dyve.data.loader import Normalization
from dyve.dynamic.net import DynamicNet
from dyve.errors import DyveError
from dyve.eval.latency import machine
from dyve.eval.measure import Measurement, measure_sharded
from dyve.eval.paired import (
    DEFAULT_RULE,
    PairedLoss,
    check_confidence,
    check_rule,
    choose,
    family_confidence,
    paired_loss,
)
from dyve.mechanisms.dyvedeep import native
from dyve.mechanisms.dyvedeep.mechanism import KNOBS, DyVEDeep
from dyve.mechanisms.dyvedeep.search import greedy
from dyve.train.dist import Dist

STATE = "calibration.json"
COSTS = ("ops", "time")
#: settings that only change which verified point is chosen; a resumed run may change them
VERIFY_KEYS = (
    "budget_pp",
    "target_reduction",
    "curve_points",
    "confidence",
    "rule",
    "batch_size",
)


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
    #: hold the budget to this one-sided confidence bound of the paired loss (None: the
    #: loss measured on the calibration split itself)
    confidence: float | None = 0.9
    #: how the operating point is chosen among the verified points
    #: (:func:`~dyve.eval.paired.choose`)
    rule: str = DEFAULT_RULE

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
        check_confidence(self.confidence)
        check_rule(self.rule)


@dataclass
class Calibration:
    """The search's record: trajectory, verified points, and the chosen step."""

    config: dict[str, Any]
    dense: dict[str, float]
    trajectory: list[dict[str, Any]] = field(default_factory=list)
    #: step index (as a string, for JSON) -> top1, scalar_ops_mean, macs_mean, and the
    #: paired counts against the dense network (worse, better)
    evaluations: dict[str, dict[str, float]] = field(default_factory=dict)
    chosen: int | None = None
    #: the machine the time search measured on (``cost="time"`` only)
    machine: dict[str, Any] | None = None
    #: the dense network's prediction per calibration image (for the paired counts)
    dense_predictions: list[int] | None = None

    def knob_values(self, step: int) -> dict[str, Any]:
        """Every knob's per-site values after ``step`` steps of the trajectory."""
        values: dict[str, dict[str, Any]] = {k: {} for k in KNOBS}
        for s in self.trajectory[: step + 1]:
            on = s["knob"] == "spet_exact"
            values[s["knob"]][s["site"]] = True if on else s["threshold"]
        return values

    def curve(self) -> list[dict[str, Any]]:
        """Verified points, cheapest last: step, top1, loss, its bound, ops and reduction."""
        pts = []
        for k, e in sorted(self.evaluations.items(), key=lambda t: int(t[0])):
            pts.append(
                {
                    "step": int(k),
                    **e,
                    "loss_pp": self.dense["top1"] - e["top1"],
                    "bound_pp": self.bound_pp(e),
                    "op_reduction": self.dense["scalar_ops_mean"] / e["scalar_ops_mean"],
                    **_pick(self.trajectory[int(k)], "est_us", "est_time_reduction"),
                }
            )
        return pts

    def family(self) -> int:
        """How many points the verification compares, fixed by the trajectory's length
        before it starts: the two ends, the bisection's steps and the curve's points."""
        steps = max(len(self.trajectory), 1)
        return 2 + math.ceil(math.log2(steps)) + int(self.config.get("curve_points", 0))

    def confidence(self) -> float | None:
        """The confidence each verified point's bound is held to (``config["confidence"]``,
        widened by the rule for :meth:`family` points)."""
        rule = self.config.get("rule", "bound")
        return family_confidence(self.config.get("confidence"), rule, self.family())

    def bound_pp(self, e: dict[str, float]) -> float:
        """The loss of evaluation ``e`` that the budget holds: its upper confidence bound
        (:meth:`confidence`), or the plain loss without one or without paired counts."""
        conf = self.confidence()
        if conf is None or "worse" not in e:
            return self.dense["top1"] - e["top1"]
        paired = PairedLoss(int(self.config["n"]), int(e["worse"]), int(e["better"]))
        return paired.bound_pp(conf)


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

    paired = cfg.confidence is not None
    if cal is not None and paired:  # points verified without paired counts: not evidence
        cal.evaluations = {k: e for k, e in cal.evaluations.items() if "worse" in e}
    if cal is None or (paired and cal.dense_predictions is None):
        m = run("dense")
        dense = {"top1": m.top1, "scalar_ops_mean": m.scalar_ops_mean, "macs_mean": m.macs_mean}
        cal = cal or Calibration(cfg_dict, dense)
        cal.dense_predictions = m.predictions.tolist()

    def save() -> None:
        if state_path is not None and ddp.main:
            write_json(state_path, asdict(cal))

    save()
    if not cal.trajectory:
        if ddp.main:
            cal.trajectory = greedy(net, mech, calib, norm, cfg, progress)
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
            if cal.dense_predictions is not None:
                pl = paired_loss(np.asarray(cal.dense_predictions), m.predictions, calib.labels)
                cal.evaluations[key].update(worse=pl.worse, better=pl.better)
            save()
            red = cal.dense["scalar_ops_mean"] / m.scalar_ops_mean
            t = cal.trajectory[step].get("est_time_reduction")
            est = f", sites' time est. {t:.2f}x less" if t is not None else ""
            e = cal.evaluations[key]
            loss = f"loss {cal.dense['top1'] - m.top1:.2f} pp (bound {cal.bound_pp(e):.2f})"
            log(f"  step {step}: top-1 {m.top1:.2f} %, {loss}, {red:.2f}x fewer scalar ops{est}")
        return cal.evaluations[key]

    def ok(step: int) -> bool:
        e = verify(step)
        if cfg.target_reduction is not None:
            return cal.dense["scalar_ops_mean"] / e["scalar_ops_mean"] < cfg.target_reduction
        return cal.bound_pp(e) <= cfg.budget_pp

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
    """The first point reaching the target, or the cheapest the rule lets within the
    budget (:func:`~dyve.eval.paired.choose`): the least scalar ops, or (time search) the
    least estimated time."""
    pts = cal.curve()
    if cfg.target_reduction is not None:
        hit = [p for p in pts if p["op_reduction"] >= cfg.target_reduction]
        return min(hit, key=lambda p: p["step"])["step"] if hit else None
    cost = "est_us" if cfg.cost == "time" else "scalar_ops_mean"
    n = int(cal.config["n"])
    return choose(pts, n, cfg.budget_pp, cal.config.get("confidence"), cost, cfg.rule, cal.family())


def _pick(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    """The entries of ``d`` named by ``keys`` that it has."""
    return {k: d[k] for k in keys if k in d}


def apply_knobs(mech: DyVEDeep, values: dict[str, Any]) -> None:
    """Set every knob from ``values`` (as :meth:`Calibration.knob_values` gives); absent = off."""
    for k in KNOBS:
        mech.set_knob(k, values.get(k) or mech.off_knobs()[k])


def _resume(path: Path | None, cfg_dict: dict[str, Any]) -> Calibration | None:
    """The saved state, if any. Its search must match ``cfg_dict``; the verification
    settings (:data:`VERIFY_KEYS`) are taken from ``cfg_dict`` (the verified points keep
    their measurements, the operating point is chosen again)."""
    if path is None or not path.exists():
        return None
    d = read_json(path)
    saved = dict(d.get("config", {}))
    saved.setdefault("cost", "ops")  # states written before the time search existed
    saved.setdefault("confidence", None)  # ... and before the confidence bound
    saved.setdefault("rule", "bound")  # ... and before the choice rules
    new = jsonable(cfg_dict)
    differ = sorted(k for k in set(saved) | set(new) if saved.get(k) != new.get(k))
    search = [k for k in differ if k not in VERIFY_KEYS]
    if search:
        raise DyveError(
            f"{path} holds a calibration with another search ({', '.join(search)}); use "
            "another --out or delete it"
        )
    return Calibration(
        config=new,
        dense=d["dense"],
        trajectory=d.get("trajectory", []),
        evaluations=d.get("evaluations", {}),
        chosen=d.get("chosen"),
        machine=d.get("machine"),
        dense_predictions=d.get("dense_predictions"),
    )
