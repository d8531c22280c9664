"""Training LC-Net (or a baseline) from a pretrained backbone: ``dyve lcnet train``.

The gates start open (LC-Net's predictors output 1, AIG's gates open with p ~ 0.95), so
the network starts as the backbone; backbone and gates are fine-tuned together with the
shared loop (:mod:`dyve.train.loop`: cosine schedule, progress, atomic checkpoints,
resume, data-parallel under ``torchrun``). Loss: cross-entropy plus LC-Net's sparsity term
``lam_l * sum|s_L| + lam_c * sum ||s_C||_1`` (or AIG's target-rate loss), whose weight
ramps linearly from 0 over the first ``ramp`` of training so blocks do not collapse early.
The SkipNet-style baseline's gates learn by policy gradient instead
(:meth:`~dyve.mechanisms.lcnet.mechanism.SkipNetStyle.policy_loss`): per sample the reward
is minus its cross-entropy minus ``alpha`` times the share of the gated blocks' MACs its
drawn decisions ran (that cost term ramps the same way).
The gates train ``gate_lr_scale`` times faster than the backbone, without weight decay.
With ``distill`` = a > 0 the cross-entropy is mixed with distillation
(:mod:`dyve.train.distill`, dyve's option, not the paper's): by default the dense
pretrained backbone (frozen) is the teacher, so the fine-tuning keeps what the backbone
knew instead of refitting the train labels in a few epochs; ``teacher`` and
``teacher_flip`` choose a more accurate one, paid for in training only (the trained
network is unchanged in size and cost).

With ``target_reduction`` = R (dyve's option) the sparsity loss is steered instead of
ramped: each batch's MAC reduction (what its decisions stand for) is held to a goal that
ramps linearly from 1 to R over the first ``ramp`` of training. The lambdas apply in full
to a batch whose reduction is short of the goal, not at all to one that has reached it,
and in proportion within a narrow band below it (:func:`steer`). A gate pushed to zero
gets no gradient again, so whatever closed stays closed: the pressure must not run ahead
of the goal, and a controller that integrates the error (tried first) overshoots. One run
then lands at a cost chosen in advance, instead of a lambda sweep around it.

With ``init`` (dyve's option) training starts from an earlier run's network, gates and
backbone, instead of the backbone with open gates: a run can go on with a fresh schedule
from where another ended (with ``ramp`` 0, a steered run holds its goal from the start).
The teacher is the one this run's config names, not the earlier run's.

After every epoch the net is evaluated on the *select* split (``auto``: val when the
backbone held it out, else test-a). The kept checkpoint is the most accurate epoch once
the ramp is over (ties: the cheaper; with ``min_reduction``, among the epochs of at least
that MAC reduction, see :func:`rank`), saved as a dynamic network (``dynamic.json`` +
``dynamic.safetensors``, loadable by ``dyve bench``); it is then run once on the report
split (test-b) with the fast back-end at batch 1, so ``metrics.json`` holds executed costs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from dyve import data as dyve_data
from dyve._io import read_json, write_json
from dyve.cost import CONVENTION
from dyve.dynamic import DynamicNet, describe, equip, load, save
from dyve.errors import DyveError
from dyve.eval.evaluate import evaluate
from dyve.eval.latency import num_threads
from dyve.eval.measure import Measurement, measure
from dyve.eval.paired import PairedLoss, save_predictions
from dyve.eval.splits import choose_splits, heldout
from dyve.mechanisms.lcnet.blocks import set_all
from dyve.mechanisms.lcnet.mechanism import ConvNetAIG, LCNet, LCNetConfig, SkipNetStyle
from dyve.models import create, model_info
from dyve.train.distill import DISTILL_ADDED, DistillSettings, build_teacher, task_loss
from dyve.train.loop import Schedule, check_counts, fit, start, write_config

METHODS = ("lcnet", "aig", "skipnet")
#: the baselines' display names (every method but LC-Net; its ablations are named by gates)
BASELINES = {"aig": "ConvNet-AIG", "skipnet": "SkipNet-style"}
#: keys added to the config after runs were made, with the value those runs had
ADDED = {
    **DISTILL_ADDED,
    "target_reduction": None,
    "bf16": False,
    "init": None,
    "reopen": False,
    "min_reduction": None,
    "warmup_epochs": 0.0,
    "alpha": 1.0,
}


@dataclass(frozen=True)
class GateTrainConfig(DistillSettings):
    """Everything that defines a gate-training run (``config.json``); the distillation
    settings (default teacher: the dense backbone) come from
    :class:`~dyve.train.distill.DistillSettings`."""

    model: str = "resnet56_cifar"
    method: str = "lcnet"
    data: str = "cifar10-jpeg"
    #: LC-Net: layer / channel gating, per-block or global predictor
    layer: bool = True
    channel: bool = True
    predictor: str = "block"
    lam_l: float = 0.02
    lam_c: float = 0.002
    #: ``none`` (the paper's loss) or ``macs`` (each term weighted by the MACs it saves)
    weighting: str = "none"
    #: AIG: target execution rate per block and the weight of its loss
    target: float = 0.6
    aig_weight: float = 2.0
    #: SkipNet-style: weight of the share of the gated blocks' MACs run, in the reward
    alpha: float = 1.0
    ramp: float = 0.5
    #: LC-Net: steer the lambdas to this MAC reduction (None: lambdas ramped as given)
    target_reduction: float | None = None
    epochs: int = 4
    batch_size: int = 128
    lr: float = 0.01
    #: linear warm-up of the learning rate before the cosine, so that a restart from a
    #: settled run (``init``) does not jump to its rate (NOTES, session 38)
    warmup_epochs: float = 0.0
    gate_lr_scale: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    seed: int = 0
    select_split: str = "auto"
    report_split: str = "auto"
    limit_train: int | None = None
    limit_eval: int | None = None
    threads: int | None = None
    device: str = "auto"
    #: train under bfloat16 autocast (:class:`dyve.train.loop.Schedule`)
    bf16: bool = False
    #: start from this earlier run's network (backbone and gates) instead of open gates
    init: str | None = None
    #: LC-Net: closed channels still get the task loss's gradient, so they can open again
    reopen: bool = False
    #: keep the most accurate epoch of at least this MAC reduction on the select split
    #: (None: the most accurate epoch; if none reaches it, the cheapest)
    min_reduction: float | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise DyveError(f"method must be one of {METHODS}, got {self.method!r}")
        check_counts(
            epochs=self.epochs,
            batch_size=self.batch_size,
            threads=self.threads,
            limit_train=self.limit_train,
            limit_eval=self.limit_eval,
        )
        if not self.lr > 0:
            raise DyveError(f"--lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise DyveError(
                f"--warmup-epochs must be >= 0 and below --epochs, got {self.warmup_epochs}"
            )
        if min(self.lam_l, self.lam_c, self.aig_weight, self.alpha, self.gate_lr_scale) < 0:
            raise DyveError("lam_l, lam_c, aig_weight, alpha and gate_lr_scale must be >= 0")
        if not 0 <= self.ramp <= 1 or not 0 < self.target <= 1:
            raise DyveError("ramp must be in [0, 1] and target in (0, 1]")
        super().__post_init__()
        if self.target_reduction is not None:
            if self.method != "lcnet" or not self.target_reduction > 1:
                raise DyveError("target_reduction is for LC-Net and must be > 1")
            if not self.lam_l + self.lam_c > 0:
                raise DyveError("target_reduction steers lam_l and lam_c: set one > 0")
        if self.min_reduction is not None and not self.min_reduction >= 1:
            raise DyveError("min_reduction must be >= 1")
        if self.method == "lcnet":  # the gates' settings are checked where they are defined
            try:
                LCNetConfig(layer=self.layer, channel=self.channel, predictor=self.predictor)
            except ValueError as exc:
                raise DyveError(str(exc)) from None
        if self.reopen and self.method != "lcnet":
            raise DyveError("reopen is for LC-Net's ReLU1 channel gates")


def build(cfg: GateTrainConfig, *, init: bool = True) -> DynamicNet:
    """The backbone with the gates attached and switched on (training state); with
    ``cfg.init`` (and ``init``), holding that run's tensors (backbone and gates) instead of
    open gates. A resumed run passes ``init=False``: its checkpoint holds every tensor, so
    it does not need the earlier run's files any more."""
    backbone = create(cfg.model, pretrained=True)
    if cfg.method == "lcnet":
        mech: LCNet | ConvNetAIG = LCNet(
            layer=cfg.layer, channel=cfg.channel, predictor=cfg.predictor, eps=0.0
        )
    elif cfg.method == "skipnet":
        mech = SkipNetStyle(threshold=0.5)
    else:
        mech = ConvNetAIG(threshold=0.5)
    net = equip(backbone, mech, backend="emulated")
    if cfg.init and init:
        src = load(cfg.init)
        held, wanted = describe(src), describe(net)
        if (held["backbone"], held["mechanisms"]) != (wanted["backbone"], wanted["mechanisms"]):
            raise DyveError(
                f"--init {cfg.init}: holds {held['backbone']} with {held['mechanisms']}, "
                f"not this run's {wanted['backbone']} with {wanted['mechanisms']}"
            )
        net.load_state_dict(src.state_dict())
    if cfg.reopen:  # LC-Net only (checked in the config)
        set_all(mech.gates, "reopen", True)
    return net


def _split(cfg: GateTrainConfig, split: str) -> dyve_data.ImageSet:
    ds = dyve_data.load(cfg.data, split)
    return ds.subset(slice(0, cfg.limit_eval)) if cfg.limit_eval else ds


def _summary(net: DynamicNet, m: Measurement) -> dict[str, Any]:
    """What runs record of one :func:`~dyve.eval.measure.measure` pass."""
    return {
        "top1": m.top1,
        "macs_per_sample": m.macs_mean,
        "cost_reduction": net.static_macs / m.macs_mean,
        "cost_mode": m.cost.cost_mode,
        "ran_fraction": m.ran_fraction,
    }


def _params(net: DynamicNet, cfg: GateTrainConfig) -> list[dict[str, Any]]:
    gates = list(net.trainable_parameters())
    ids = {id(p) for p in gates}
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in net.parameters():
        if id(p) not in ids:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
        {"params": gates, "weight_decay": 0.0, "lr_scale": cfg.gate_lr_scale},
    ]


def train_gates(
    cfg: GateTrainConfig, out: Path, *, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train, select the checkpoint, report once (see module docstring); the metrics."""
    config = asdict(cfg)
    device, ddp = start(
        out, config, resume, cfg.threads, cfg.device, cfg.batch_size, cfg.seed, ADDED
    )
    net = build(cfg, init=not resume)  # first: an unknown or non-residual model fails here
    info = model_info(net.backbone)
    teacher = build_teacher(cfg, cfg.model, info, device)  # a missing teacher: before files
    select, report = choose_splits(cfg.select_split, cfg.report_split, heldout(cfg.model))
    mech = net.mechanisms[0]
    train_set = dyve_data.load_images(
        cfg.data, "train", limit=cfg.limit_train, shape=info.input_size
    )
    select_set = _split(cfg, select)
    net.to(device)
    opt = torch.optim.SGD(_params(net, cfg), lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    write_config(out, config, resume, ddp, len(train_set), cfg.batch_size)

    def step(
        m: nn.Module, x: torch.Tensor, y: torch.Tensor, frac: float
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        logits = m(x)
        task, logs = task_loss(cfg, teacher, logits, x, y)
        w = ramped(cfg.ramp, frac)
        if isinstance(mech, LCNet):
            if cfg.target_reduction:
                reduction = mech.training_reduction(float(net.static_macs))
                w = steer(reduction, goal(cfg.target_reduction, cfg.ramp, frac))
                logs.update(reduction=reduction, lam_scale=w)
            reg = mech.regularizer(w * cfg.lam_l, w * cfg.lam_c, cfg.weighting)
        elif isinstance(mech, SkipNetStyle):
            share = mech.executed_share()
            ce = F.cross_entropy(logits.detach().float(), y, reduction="none").cpu()
            reg = mech.policy_loss(-ce - w * cfg.alpha * share)
            logs.update(executed=float(share.mean()))
        else:
            reg = w * cfg.aig_weight * cast(ConvNetAIG, mech).target_loss(cfg.target)
        return task + reg, logits, {**logs, "reg": float(reg.detach()), **_open(mech)}

    def validate(m: nn.Module, epoch: int) -> dict[str, Any]:
        r = _summary(net, measure(net, select_set, info.norm))
        done = (epoch + 1) / cfg.epochs >= cfg.ramp - 1e-9
        row = {f"select_{k}": v for k, v in r.items() if k != "ran_fraction"}
        best = _best(out)
        cap = net.static_macs / cfg.min_reduction if cfg.min_reduction else None
        if done and (best is None or rank(r, cap) > rank(best, cap)):
            save(net, out)
            write_json(out / "best.json", {"epoch": epoch + 1, **r, "split": select})
        return row

    sched = Schedule(
        cfg.epochs, cfg.batch_size, cfg.lr, cfg.warmup_epochs, cfg.seed, True, True, cfg.bf16
    )
    fit(net, opt, train_set, info.norm, sched, out, step, validate,
        device=device, dist=ddp, resume=resume, progress=progress)  # fmt: skip
    metrics: dict[str, Any] = {}
    if ddp.main:
        metrics = report_run(out, cfg, select, report, progress=progress)
    ddp.close()
    return metrics


def ramped(ramp: float, frac: float) -> float:
    """How far the ramp over the first ``ramp`` of training is after the share ``frac``:
    0 -> 1 linearly, then 1."""
    return min(1.0, frac / ramp) if ramp > 0 else 1.0


def goal(target: float, ramp: float, frac: float) -> float:
    """The MAC reduction a steered run aims at after the share ``frac`` of training: from 1
    linearly to ``target`` over the first ``ramp``."""
    return 1.0 + (target - 1.0) * ramped(ramp, frac)


#: the band below the goal (in log reduction) over which the steered weight goes 1 -> 0
STEER_BAND = 0.02


def steer(reduction: float, goal: float) -> float:
    """The weight on both lambdas for a batch of ``reduction``: 1 when it is short of
    ``goal`` by ``STEER_BAND`` (in log) or more, 0 once it reaches it, linear between."""
    return min(1.0, max(0.0, math.log(goal / reduction) / STEER_BAND))


def _open(mech: Any) -> dict[str, float]:
    """Training-time gate statistics for the progress bar and history."""
    slots = mech.slots
    s_l = [s.s_l for s in slots if s.s_l is not None]
    s_c = [s.s_c for s in slots if s.s_c is not None]
    out = {}
    if s_l:
        out["layer_open"] = float(torch.stack([(v > 0).float().mean() for v in s_l]).mean())
    if s_c:
        out["channel_open"] = float(torch.stack([(v > 0).float().mean() for v in s_c]).mean())
    return out


def rank(r: dict[str, Any], cap: float | None) -> tuple[bool, float, float]:
    """How an epoch's select-split result ranks for the kept checkpoint (higher is better):
    within ``cap`` MACs (or with no cap) the more accurate, then the cheaper; beyond the
    cap, below any epoch within it, the cheaper first."""
    if cap is None or r["macs_per_sample"] <= cap:
        return True, r["top1"], -r["macs_per_sample"]
    return False, -r["macs_per_sample"], r["top1"]


def _best(out: Path) -> dict[str, Any] | None:
    path = out / "best.json"
    return read_json(path) if path.is_file() else None


#: the statistics of each image's executed MACs that a run's report keeps
SPREAD = ("macs_min", "macs_p50", "macs_p95", "macs_max")


def report_run(
    out: Path, cfg: GateTrainConfig, select: str, report: str, *, progress: bool = True
) -> dict[str, Any]:
    """Run the kept checkpoint once on the report split; write ``metrics.json``."""
    best = _best(out)
    if best is None:
        raise DyveError(f"{out}: no checkpoint was kept (did training finish?)")
    net = load(out).eval()
    ds = _split(cfg, report)
    base = create(cfg.model, pretrained=True)
    norm = model_info(base).norm
    dense = evaluate(base, ds, norm)
    net.backend = "emulated"
    emu = _summary(net, measure(net, ds, norm))
    net.backend = "fast"
    with num_threads(1):  # batch 1: executed per-sample cost of each decision
        ran = measure(net, ds, norm, batch_size=1, progress=progress)
    fast = _summary(net, ran)
    paired = PairedLoss.of(dense.predictions == ds.labels, ran.predictions == ds.labels)
    spread = ran.cost.summary()
    metrics = {
        "top1": fast["top1"],
        "baseline_top1": dense.top1,
        # the images on which the two differ in correctness: the loss's sampling error
        "paired": {"worse": paired.worse, "better": paired.better},
        "baseline": f"{cfg.model} (shipped weights, dense)",
        "macs_per_sample": fast["macs_per_sample"],
        # how far the executed cost spreads over the images (the page's adaptivity section)
        **{k: spread[k] for k in SPREAD},
        "baseline_macs_per_sample": net.static_macs,
        "cost_reduction": fast["cost_reduction"],
        "cost_mode": fast["cost_mode"],
        "simulated_macs_per_sample": emu["macs_per_sample"],
        "cost_convention": CONVENTION,
        "ran_fraction": emu["ran_fraction"],
        "split": report,
        "select_split": select,
        "n": len(ds),
        "chosen_epoch": best["epoch"],
        "select": {k: best[k] for k in ("top1", "macs_per_sample", "cost_reduction")},
        "method": cfg.method,
        "dataset": cfg.data,
    }
    save_predictions(out, ran.predictions, ds.labels)  # for paired comparisons of runs
    write_json(out / "metrics.json", metrics)
    return metrics
