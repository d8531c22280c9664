"""The DyVEDeep run: calibrate on val, evaluate once on test, write the run directory.

``RUN_DIR`` receives ``config.json`` (resolved settings and the command), ``calibration.json``
(trajectory and verified points; what a resumed run continues from), ``test.json`` (each
test evaluation as it finishes), ``curve.json``/``curve.png``/``curve.svg`` (top-1 versus
scalar-op reduction on the calibration split), ``metrics.json`` and the calibrated network
(``dynamic.json`` + ``dynamic.safetensors``: ``dyve.dynamic.load(RUN_DIR)``,
``dyve bench RUN_DIR``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from dyve._io import atomic_save, jsonable, read_json, write_json
from dyve.cost import CONVENTION
from dyve.dynamic import equip, save
from dyve.dynamic.net import DynamicNet
from dyve.errors import DyveError
from dyve.eval.measure import Measurement, measure_sharded
from dyve.mechanisms.dyvedeep.calibrate import (
    VERIFY_KEYS,
    Calibration,
    CalibrationConfig,
    apply_knobs,
    calibrate,
)
from dyve.mechanisms.dyvedeep.mechanism import KNOBS, DyVEDeep
from dyve.train.dist import Dist, init
from dyve.version import __version__

#: the scalar-op convention every DyVEDeep table states
OPS_CONVENTION = (
    "scalar ops = multiplies + adds + compares (a MAC is 2), overheads included; "
    "conv/linear only, BN/ReLU/pooling/bias not counted"
)
PARTS = ("spet_saved", "exact_saved", "sdss_saved", "sfma_saved", "overhead")


@dataclass(frozen=True)
class JobConfig:
    """Everything a DyVEDeep run depends on (written to ``config.json``)."""

    model: str
    data: str
    weights: str | None = None
    split: str = "val"
    test_split: str = "test"
    limit: int | None = None
    test_limit: int | None = None
    data_dir: str | None = None
    checkpoint: float = 0.25
    sdss_stride: int = 2
    sfma_statistic: str = "variance"
    first_layer: bool = False
    ablations: bool = True
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)

    def __post_init__(self) -> None:
        self.mechanism()  # the knobs' settings are checked where they are defined

    def mechanism(self) -> DyVEDeep:
        """The mechanism with this run's settings, every knob off."""
        return DyVEDeep(
            checkpoint=self.checkpoint,
            sdss_stride=self.sdss_stride,
            sfma_statistic=self.sfma_statistic,
            first_layer=self.first_layer,
        )


def run_job(
    cfg: JobConfig,
    out: str | os.PathLike[str],
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
    command: str | None = None,
) -> dict[str, Any]:
    """Calibrate, test once, write ``out`` (see module docstring); returns the metrics."""
    from dyve.data import load_images
    from dyve.eval.latency import machine
    from dyve.models import create, model_info
    from dyve.models.weights import shipped_meta

    out = Path(out)
    ddp = init()
    backbone = create(cfg.model, pretrained=cfg.weights if cfg.weights else True)
    info = model_info(backbone)
    calib = load_images(cfg.data, cfg.split, cfg.data_dir, limit=cfg.limit, shape=info.input_size)
    test = load_images(
        cfg.data, cfg.test_split, cfg.data_dir, limit=cfg.test_limit, shape=info.input_size
    )
    net = equip(
        backbone,
        cfg.mechanism(),
        example_inputs=torch.zeros(1, *info.input_size),
        backend="emulated",
    )
    config = {**asdict(cfg), "command": command, "dyve_version": __version__}
    _check_resume(out / "config.json", config)
    meta = shipped_meta(cfg.model) if not cfg.weights else {}
    if ddp.main:
        write_json(out / "config.json", {**config, "machine": machine()})
    cal = calibrate(
        net,
        calib,
        info.norm,
        cfg.calibration,
        state_dir=out,
        progress=progress and ddp.main,
        log=log,
        ddp=ddp,
    )
    chosen = cal.knob_values(cal.chosen) if cal.chosen is not None else {}
    tests = _TestRuns(
        net, test, info.norm, out / "test.json", cfg.calibration.batch_size, progress, ddp
    )
    dense = tests.get("dense", {})
    dyn = tests.get("dyvedeep", chosen, keep=True)
    alone = {}
    if cfg.ablations:
        for k in KNOBS:
            if chosen.get(k):
                alone[k] = tests.get(k, {k: chosen[k]})
    _set(net, chosen)
    if not ddp.main:  # rank 0 writes the run
        ddp.close()
        return {}
    # training-free on shipped weights: only the description (tensors: the zoo's)
    save(net, out, backbone_weights=bool(cfg.weights))
    metrics = _metrics(net, cal, dense, dyn, alone, tests.breakdown, test.split, len(test))
    # the shipped weights that did not hold val out were trained on all of train (val too)
    saw = cfg.split in ("train", "val") and meta.get("val_heldout") is False
    metrics["weights_saw_calibration_split"] = saw
    write_json(out / "metrics.json", metrics)
    _write_curve(cal, out, cfg)
    ddp.close()
    return metrics


class _TestRuns:
    """Test-split evaluations, each run once and kept in ``test.json`` (resumable; split
    over the processes under torchrun, written by rank 0)."""

    def __init__(
        self,
        net: DynamicNet,
        data: Any,
        norm: Any,
        path: Path,
        batch: int,
        progress: bool,
        ddp: Dist,
    ) -> None:
        self.net, self.data, self.norm, self.path = net, data, norm, path
        self.batch, self.progress, self.ddp = batch, progress, ddp
        self.done: dict[str, Any] = read_json(path) if path.exists() else {}
        self.breakdown: dict[str, dict[str, float]] = self.done.get("_breakdown", {})

    def get(self, name: str, values: dict[str, Any], keep: bool = False) -> dict[str, float]:
        """The test run ``name`` at the knob ``values``; measured again if the values
        changed since it was kept (a resumed run that chose another point)."""
        knobs = jsonable(values)
        if self.done.get(name, {}).get("knobs") != knobs:
            _set(self.net, values)
            m: Measurement = measure_sharded(
                self.net,
                self.data,
                self.norm,
                self.ddp,
                batch_size=self.batch,
                progress=self.progress,
                desc=f"test: {name}",
            )
            self.done[name] = {
                "top1": m.top1,
                "top5": m.top5,
                "scalar_ops_mean": m.scalar_ops_mean,
                "macs_mean": m.macs_mean,
                "cost_mode": m.cost.cost_mode,
                "knobs": knobs,
            }
            if keep:
                self.breakdown = self.done["_breakdown"] = m.breakdown
            if self.ddp.main:
                write_json(self.path, self.done)
        result: dict[str, float] = self.done[name]
        return result


def _set(net: DynamicNet, values: dict[str, Any]) -> None:
    mech = net.mechanism("dyvedeep")
    assert isinstance(mech, DyVEDeep)
    apply_knobs(mech, values)


def _metrics(
    net: DynamicNet,
    cal: Calibration,
    dense: dict[str, float],
    dyn: dict[str, float],
    alone: dict[str, dict[str, float]],
    breakdown: dict[str, dict[str, float]],
    split: str,
    n: int,
) -> dict[str, Any]:
    base_ops = 2.0 * net.static_macs
    site_parts = {s: d for s, d in breakdown.items() if s in net.sites}
    totals = {p: sum(d.get(p, 0.0) for d in site_parts.values()) for p in PARTS}
    chosen = next((p for p in cal.curve() if p["step"] == cal.chosen), None)
    return {
        "baseline_top1": dense["top1"],
        "top1": dyn["top1"],
        "accuracy_loss_pp": dense["top1"] - dyn["top1"],
        "baseline_scalar_ops_per_sample": base_ops,
        "scalar_ops_per_sample": dyn["scalar_ops_mean"],
        "op_reduction": base_ops / dyn["scalar_ops_mean"],
        "baseline_macs_per_sample": float(net.static_macs),
        "macs_per_sample": dyn["macs_mean"],
        "mac_reduction": net.static_macs / dyn["macs_mean"],
        "split": split,
        "n": n,
        "cost_mode": dyn["cost_mode"],
        "cost_convention": f"{OPS_CONVENTION}; {CONVENTION}",
        "ops_saved_fraction": {p: v / base_ops for p, v in totals.items() if p != "overhead"},
        "overhead_fraction": totals["overhead"] / dyn["scalar_ops_mean"],
        "knob_alone": {
            k: {
                "top1": v["top1"],
                "accuracy_loss_pp": dense["top1"] - v["top1"],
                "op_reduction": base_ops / v["scalar_ops_mean"],
            }
            for k, v in alone.items()
        },
        "per_layer": {
            s: {
                "baseline_ops": 2.0 * net.sites[s].macs,
                "ops": d["scalar_ops"],
                "op_reduction": 2.0 * net.sites[s].macs / d["scalar_ops"],
                **{p: d.get(p, 0.0) for p in PARTS},
            }
            for s, d in site_parts.items()
        },
        "calibration": {
            "split": cal.config["split"],
            "n": cal.config["n"],
            "budget_pp": cal.config["budget_pp"],
            "confidence": cal.config.get("confidence"),
            "rule": cal.config.get("rule", "bound"),
            "target_reduction": cal.config["target_reduction"],
            "baseline_top1": cal.dense["top1"],
            "chosen_step": cal.chosen,
            "steps": len(cal.trajectory),
            "verified_points": len(cal.evaluations),
            "top1": chosen["top1"] if chosen else None,
            "loss_bound_pp": chosen["bound_pp"] if chosen else None,
            "op_reduction": chosen["op_reduction"] if chosen else None,
            "cost": cal.config.get("cost", "ops"),
            "est_time_reduction": chosen.get("est_time_reduction") if chosen else None,
            "machine": cal.machine,
        },
        "knobs": net.knobs(),
    }


def _write_curve(cal: Calibration, out: Path, cfg: JobConfig) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pts = cal.curve()
    write_json(
        out / "curve.json",
        {
            "format": "dyve.dyvedeep-curve/1",
            "dense": cal.dense,
            "points": pts,
            "chosen_step": cal.chosen,
            "convention": OPS_CONVENTION,
            "cost_mode": "simulated",
        },
    )
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([p["op_reduction"] for p in pts], [p["top1"] for p in pts], "o-", label="verified")
    ax.axhline(cal.dense["top1"], color="grey", lw=0.8, label="dense")
    if cfg.calibration.target_reduction is None:
        ax.axhline(
            cal.dense["top1"] - cfg.calibration.budget_pp,
            color="grey",
            ls="--",
            lw=0.8,
            label=f"budget {cfg.calibration.budget_pp} pp",
        )
    for p in pts:
        if p["step"] == cal.chosen:
            ax.plot([p["op_reduction"]], [p["top1"]], "r*", ms=14, label="chosen")
    ax.set_xscale("log")
    ax.set_ylim(cal.dense["top1"] - 15, cal.dense["top1"] + 1)  # the cliff's foot is cut off
    ax.set_xlabel("scalar-op reduction (x, simulated, log scale)")
    ax.set_ylabel(f"top-1 % ({cal.config['dataset']}/{cal.config['split']})")
    ax.set_title(f"DyVEDeep on {cfg.model}")
    ax.legend(fontsize=8)
    for ext in ("png", "svg"):
        atomic_save(out / f"curve.{ext}", partial(_savefig, fig, ext))


def _savefig(fig: Any, fmt: str, path: str) -> None:
    fig.savefig(path, format=fmt, dpi=110)


def _check_resume(path: Path, config: dict[str, Any]) -> None:
    """Refuse to resume a run with other settings, except the calibration's verification
    settings (:data:`.calibrate.VERIFY_KEYS`: the search is kept, the point chosen again)."""
    if not path.exists():
        return

    def search(d: dict[str, Any]) -> dict[str, Any]:
        cal = {k: v for k, v in d.get("calibration", {}).items() if k not in VERIFY_KEYS}
        cal.setdefault("cost", "ops")  # runs from before the time search
        drop = ("machine", "command", "calibration")
        return {**{k: v for k, v in d.items() if k not in drop}, "calibration": cal}

    if search(read_json(path)) != search(jsonable(config)):
        raise DyveError(f"{path.parent} holds a run with other settings; use another --out")
