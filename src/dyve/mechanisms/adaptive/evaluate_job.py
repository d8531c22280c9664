"""``dyve exits evaluate`` and ``dyve select evaluate``: a fitted run at another setting.

A fit job (:mod:`.exits_job`, :mod:`.select_job`) sweeps every policy on cached outputs and
executes one operating point, the chosen lambda. This job loads the run's saved system,
sets its policy (another stored lambda, or a threshold baseline: ``max_prob`` /
``entropy`` at a threshold), and executes it on a split: fast back-end, so samples really
leave at their exit and unchosen networks really do not run, with executed MACs. The run's
reference network runs on the same images. With ``latency_images`` it also times both at
batch 1 on one thread, interleaved, frozen as deployed, the reference also in the native
runtime when the system runs there.

It writes a run directory of its own: ``config.json`` (the source run and the setting)
and ``metrics.json`` with the fit jobs' fields (``top1``, ``baseline_top1``,
``macs_per_sample``, ``cost_reduction``, ``split``, ...). The default split is the source
run's eval split. Choose a setting on the fit split, never on the split you report.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dyve import data as dyve_data
from dyve._io import check_out, read_json, write_json
from dyve.errors import DyveError
from dyve.eval.evaluate import evaluate
from dyve.mechanisms.adaptive.job import (
    JobConfig,
    executed,
    latency_images,
    latency_metrics,
    load_split,
    tuned_reference,
)
from dyve.mechanisms.adaptive.job import mean_latency as timed
from dyve.mechanisms.adaptive.policy import THRESHOLD_KINDS, ThresholdPolicy
from dyve.models import model_info


@dataclass(frozen=True)
class EvalConfig:
    """What an evaluation ran with (``config.json``)."""

    #: the fitted run (an early-exit or network-selection run directory)
    run: str
    #: a stored learned policy by its lambda (None: the run's chosen one, unless ``policy``)
    lam: float | None = None
    #: a threshold baseline instead of a learned policy: "max_prob" or "entropy"
    policy: str | None = None
    threshold: float | None = None
    #: dataset and split (None: the source run's dataset and eval split)
    data: str | None = None
    split: str | None = None
    limit: int | None = None
    #: images timed at batch 1 (0: no timing)
    latency_images: int = 0
    batch_size: int = 256

    def __post_init__(self) -> None:
        if self.policy is not None:
            if self.policy not in THRESHOLD_KINDS:
                raise DyveError(f"policy must be one of {THRESHOLD_KINDS}, got {self.policy!r}")
            if self.threshold is None or math.isnan(self.threshold):
                raise DyveError(f"a {self.policy} policy needs a threshold")
            if self.lam is not None:
                raise DyveError("give a learned lambda or a threshold policy, not both")
        elif self.threshold is not None:
            raise DyveError("a threshold needs a policy (max_prob or entropy)")
        if self.latency_images < 0 or (self.limit is not None and self.limit < 1):
            raise DyveError("latency_images must be >= 0 and limit >= 1")
        if self.batch_size < 1:
            raise DyveError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class _System:
    """A loaded run: the system, its reference network and what describes them."""

    model: Any  # a DynamicNet or a Selection: ``run(x)`` and ``forward``
    reference: nn.Module
    reference_name: str
    reference_macs: float
    norm: dyve_data.Normalization
    setting: dict[str, Any]


def evaluate_run(cfg: EvalConfig, out: Path, *, progress: bool = True) -> dict[str, Any]:
    """Execute ``cfg.run`` at ``cfg``'s setting; write ``out/config.json`` and
    ``out/metrics.json`` and return the metrics."""
    run = Path(cfg.run)
    if not (run / "config.json").is_file() or not (run / "metrics.json").is_file():
        raise DyveError(f"{run}: not a fitted exits or select run (no config.json/metrics.json)")
    if out.resolve() == run.resolve():
        raise DyveError("--out must be a new directory, not the fitted run")
    setting = ("run", "lam", "policy", "threshold", "limit")  # may be evaluated again
    check_out(out, {k: v for k, v in asdict(cfg).items() if k in setting})
    fitted = read_json(run / "config.json")
    source = read_json(run / "metrics.json")
    if source.get("method") not in ("early_exit", "network_selection") or "models" not in fitted:
        raise DyveError(f"{run}: not a run of `dyve exits fit` or `dyve select fit`")
    job = JobConfig(
        models=tuple(fitted["models"]),
        data=cfg.data or fitted["data"],
        limit=cfg.limit,
        latency_images=cfg.latency_images,
        batch_size=cfg.batch_size,
    )
    split = cfg.split or source["split"]
    if split == source.get("fit_split"):
        print(
            f"dyve: warning: {split} is the split the policies were fitted on; its figures "
            f"are not held out (the run's eval split is {source['split']})",
            file=sys.stderr,
        )
    system = _load(run, cfg, str(source.get("baseline", "")))
    ds = load_split(job, split)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", {**asdict(cfg), "data": job.data, "split": split})
    got = executed(system.model.run, ds, job, system.norm, progress=progress)
    ref = evaluate(system.reference, ds, system.norm, batch_size=job.batch_size).top1
    metrics: dict[str, Any] = {
        "method": source.get("method"),
        "source_run": str(run),
        **system.setting,
        "top1": got["top1"],
        "baseline_top1": ref,
        "baseline": system.reference_name,
        "macs_per_sample": got["macs_mean"],
        "baseline_macs_per_sample": system.reference_macs,
        "cost_reduction": system.reference_macs / got["macs_mean"],
        "cost_mode": "executed",
        "cost_convention": "MACs per sample (FLOPs = 2 x MACs)",
        "split": split,
        "n": len(ds),
        "dataset": job.data,
    }
    if cfg.latency_images:
        metrics.update(_latency(system, latency_images(ds, job, system.norm)))
    write_json(out / "metrics.json", metrics)
    return metrics


def _load(run: Path, cfg: EvalConfig, reference: str) -> _System:
    """The saved system at ``cfg``'s setting, and its reference (a selection's: the network
    the fit job compared with, ``reference``)."""
    if (run / "selection.json").is_file():
        return _selection(run, cfg, reference)
    if (run / "dynamic.json").is_file():
        return _early_exit(run, cfg)
    raise DyveError(f"{run}: no saved system (dynamic.json or selection.json)")


def _early_exit(run: Path, cfg: EvalConfig) -> _System:
    from dyve.dynamic import load

    net = load(run)
    net.backend = "fast"
    mech = net.mechanism("early_exit")
    if cfg.policy is not None:
        net.set_knobs(policy=cfg.policy, threshold=cfg.threshold)
        setting: dict[str, Any] = {"policy": cfg.policy, "threshold": cfg.threshold}
    else:
        lam = mech.config.lam if cfg.lam is None else cfg.lam
        if mech.config.policy != "learned" and cfg.lam is None:
            raise DyveError(f"{run}: no chosen learned policy; give --lam or --policy")
        net.set_knobs(policy="learned", lam=lam)
        setting = {"policy": "learned", "lam": lam}
    ref = net.detach().eval()
    return _System(
        net.eval(),
        ref,
        f"{net.backbone_id} without exits",
        float(net.graph.total_macs),
        model_info(net.backbone).norm,
        setting,
    )


def _selection(run: Path, cfg: EvalConfig, reference: str) -> _System:
    from dyve.mechanisms.adaptive.select_job import load_selection

    sel = load_selection(run, None if cfg.policy is not None else cfg.lam)
    if cfg.policy is not None:
        assert cfg.threshold is not None
        sel.policy = ThresholdPolicy(cfg.policy, cfg.threshold)
        sel.policy_macs = 0.0  # a threshold reads the softmax: no policy MACs counted
        setting: dict[str, Any] = {"policy": cfg.policy, "threshold": cfg.threshold}
    else:
        setting = {"policy": "learned", "lam": sel.policy.lam}  # type: ignore[attr-defined]
    ref = reference if reference in sel.networks else sel.graph.names[-1]
    return _System(
        sel.eval(),
        sel.networks[ref].eval(),
        ref,
        float(sel.graph.node(ref).cost),
        model_info(sel.networks[ref]).norm,
        setting,
    )


def _latency(system: _System, imgs: list[torch.Tensor]) -> dict[str, Any]:
    """Batch-1 timing of the system against its reference, as the fit jobs time it."""
    model = system.model
    model.freeze()
    with torch.no_grad():
        native = model.dense_runner(system.reference, imgs[0])
    fns: dict[str, Callable[[torch.Tensor], Any]] = {
        "baseline": system.reference,
        "baseline_tuned": tuned_reference(system.reference, imgs[0]),
    }
    if native is not None:
        fns["baseline_native"] = native
    fns["dynamic"] = model
    lat = timed(fns, imgs)
    return latency_metrics(lat, len(imgs), model.frozen)
