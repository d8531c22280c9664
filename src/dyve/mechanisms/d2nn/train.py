"""Training a D2NN end to end: backprop on executed paths plus Q-learning (``dyve d2nn train``).

One run trains one graph of the zoo (``d2nn_<arch>_cifar``) with the shared loop
(:mod:`dyve.train.loop`: cosine schedule, progress, atomic checkpoints, resume). Each batch
runs the graph with the fast back-end (nodes compute only the rows routed to them) under
a routing:

* ``learned``: epsilon-greedy over the controllers' Q-values; epsilon anneals linearly from
  ``eps_start`` to ``eps_end`` over the first ``eps_decay`` of training, then stays. Loss =
  cross-entropy on the executed path + ``q_weight`` x the Q-learning loss
  (:mod:`~dyve.mechanisms.d2nn.qlearn`); controllers train ``q_lr_scale`` times the base
  learning rate without weight decay and see their state detached.
* ``random``: every decision uniformly random (pre-training with every branch trained on
  part of the data; also the static-decision baseline: one set of weights for every
  static path).
* ``all``: every node runs for every sample, controllers idle, the loss summed over the
  branch outputs feeding the output node (the paper's pre-training with all branches
  executed; also a static-decision baseline).
* ``static``: always the static actions (the full network trained alone).

``freeze`` (with ``learned`` and ``init``) trains the controllers only: the regular nodes
keep ``init``'s weights, so the static paths are exactly ``init``'s (for example the
``all`` run, every branch trained) and the comparison isolates the learned decisions.

``init`` starts from another run's weights (a pre-training run). Images are CIFAR-10's
train split; the checkpoint kept is the last epoch; after training the run is measured
once on val (``select``) and test (``report``) with the fast back-end: the greedy policy
and a cost-bias sweep (learned), or every static path (random, static). The cascade is
trained and scored on one class against the rest (``positive``) with F1 over mini-bags.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dyve import data as dyve_data
from dyve._io import write_json
from dyve.cost import CONVENTION
from dyve.dynamic import DynamicNet, equip, load, save
from dyve.errors import DyveError
from dyve.eval.measure import measure
from dyve.mechanisms.d2nn.archs import ARCHS, NOT_RUN
from dyve.mechanisms.d2nn.mechanism import D2NN, EpsGreedy
from dyve.mechanisms.d2nn.module import D2Graph
from dyve.mechanisms.d2nn.qlearn import bag_f1, final_reward, q_loss, q_targets, task_loss
from dyve.models import create, model_info
from dyve.train.loop import Schedule, check_counts, fit, start, write_config

ROUTES = ("learned", "random", "all", "static")
BIASES = (0.0, 0.05, 0.1, 0.2, 0.4, 0.8)
#: keys added to the config after runs were made, with the value those runs had
ADDED = {"bf16": False}


@dataclass(frozen=True)
class D2NNTrainConfig:
    """Everything that defines a D2NN training run (``config.json``)."""

    arch: str = "highlow"
    route: str = "learned"
    lam: float = 0.1
    data: str = "cifar10-jpeg"
    epochs: int = 3
    batch_size: int = 128
    lr: float = 0.05
    weight_decay: float = 5e-4
    q_lr_scale: float = 0.2
    q_weight: float = 1.0
    eps_start: float = 1.0
    eps_end: float = 0.1
    eps_decay: float = 0.5
    #: cascade: the class scored against the rest, and the mini-bag size
    positive: int = 0
    bag: int = 32
    init: str | None = None
    #: route ``learned`` from ``init``: train the controllers only; every regular node keeps
    #: ``init``'s weights (batch norms in eval mode), so the run's static paths are
    #: exactly ``init``'s and the comparison isolates what the learned decisions add
    freeze: bool = False
    #: route ``static``: the path trained ("q=low"; default: the graph's static actions)
    static: str | None = None
    seed: int = 0
    #: train under bfloat16 autocast (:class:`dyve.train.loop.Schedule`)
    bf16: bool = False
    #: first images of train / of val and test only (quick checks)
    limit_train: int | None = None
    limit_eval: int | None = None

    def __post_init__(self) -> None:
        check_counts(
            epochs=self.epochs,
            batch_size=self.batch_size,
            bag=self.bag,
            limit_train=self.limit_train,
            limit_eval=self.limit_eval,
        )
        if not self.lr > 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")
        if self.arch not in ARCHS:
            raise ValueError(f"--arch must be one of {ARCHS}, got {self.arch!r}")
        if self.route not in ROUTES:
            raise ValueError(f"--route must be one of {ROUTES}, got {self.route!r}")
        if self.lam < 0 or not 0 <= self.eps_end <= self.eps_start <= 1:
            raise ValueError("need lam >= 0 and 0 <= eps_end <= eps_start <= 1")
        if self.freeze and (self.route != "learned" or not self.init):
            raise ValueError("--freeze trains the controllers of --route learned from --init")
        if self.static and self.route != "static":
            raise ValueError("--static names the path of --route static")
        if self.arch == "cascade" and self.batch_size % self.bag:
            raise ValueError(f"--batch-size {self.batch_size} must be whole bags of {self.bag}")

    @property
    def model(self) -> str:
        return f"d2nn_{self.arch}_cifar"

    @property
    def metric(self) -> str:
        return "f1" if self.arch == "cascade" else "accuracy"

    def eps(self, progress: float) -> float:
        """Exploration rate at ``progress`` (0..1) of training."""
        if self.route == "random":
            return 1.0
        t = min(1.0, progress / self.eps_decay) if self.eps_decay > 0 else 1.0
        return self.eps_start + t * (self.eps_end - self.eps_start)


def build(cfg: D2NNTrainConfig) -> D2Graph:
    """The run's graph: the zoo model, with ``init``'s weights when given."""
    graph = create(cfg.model, num_classes=2 if cfg.arch == "cascade" else None, static=cfg.static)
    if cfg.init:
        src = load(cfg.init)
        if src.backbone_id != cfg.model:
            raise DyveError(f"--init {cfg.init}: holds {src.backbone_id}, not {cfg.model}")
        graph.load_state_dict(src.backbone.state_dict())
    assert isinstance(graph, D2Graph)
    return graph


def task_data(cfg: D2NNTrainConfig, split: str) -> dyve_data.ImageSet:
    """A split of the data; for the cascade, labels 1 = ``positive`` class, 0 = the rest."""
    ds = dyve_data.load(cfg.data, split)
    limit = cfg.limit_train if split == "train" else cfg.limit_eval
    if limit is not None:
        ds = ds.subset(slice(0, limit))
    if cfg.arch != "cascade":
        return ds
    if not 0 <= cfg.positive < len(ds.classes):
        raise DyveError(f"--positive must name a class, 0 to {len(ds.classes) - 1}")
    y = (ds.labels == cfg.positive).astype(np.int64)
    return replace(ds, labels=y, classes=("rest", ds.classes[cfg.positive]))


def train(
    cfg: D2NNTrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    threads: int | None = None,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Train, then measure on val and test; ``metrics.json`` (see module docstring)."""
    out = Path(out)
    config = asdict(cfg)
    dev, ddp = start(out, config, resume, threads, device, cfg.batch_size, cfg.seed, ADDED)
    graph = build(cfg).to(dev)
    norm = model_info(graph).norm
    train_set = task_data(cfg, "train")
    write_config(out, config, resume, ddp, len(train_set), cfg.batch_size)
    ctrl = list(graph.controllers.parameters())
    ctrl_ids = {id(p) for p in ctrl}
    rest = [p for p in graph.parameters() if id(p) not in ctrl_ids]
    groups: list[dict[str, Any]] = [
        {"params": ctrl, "weight_decay": 0.0, "lr_scale": cfg.q_lr_scale}
    ]
    if cfg.freeze:
        for p in rest:
            p.requires_grad_(False)
    else:
        groups.insert(0, {"params": rest, "weight_decay": cfg.weight_decay})
    opt = torch.optim.SGD(
        groups,
        lr=cfg.lr,
        momentum=0.9,
        nesterov=True,
    )
    costs = graph.action_costs()

    def step(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor, progress: float
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        g: D2Graph = model  # type: ignore[assignment]
        if cfg.freeze:  # the regular nodes' batch norms keep init's running statistics
            g.eval()
            g.controllers.train()
        eps = cfg.eps(progress)
        seed = cfg.seed * 1_000_003 + round(progress * 1e9)
        if cfg.route == "all":
            out, heads = g.run_all(x)
            loss = sum((task_loss(h, y, NOT_RUN / 2) for h in heads), out.new_zeros(()))
            return loss, heads[-1], {"macs_m": g.all_macs / 1e6}
        if cfg.route == "static":
            exe = g.execute(x)
        else:
            exe = g.execute(x, EpsGreedy(costs, eps, torch.Generator().manual_seed(seed)))
        loss = task_loss(exe.out, y, NOT_RUN / 2)
        logs = {"macs_m": float(exe.macs.mean()) / 1e6}
        if cfg.route in ("learned", "random"):
            logs["eps"] = eps
        if cfg.route == "learned":
            final = final_reward(exe.out, y, cfg.metric, cfg.bag)
            lq = q_loss(exe, q_targets(g, exe, final, cfg.lam))
            loss = loss + cfg.q_weight * lq
            logs["q_loss"] = float(lq.detach())
        return loss, exe.out, logs

    select = task_data(cfg, "val")

    def validate(model: nn.Module, epoch: int) -> dict[str, Any]:
        r = score(_dynamic(model, cfg), select, norm, cfg)
        return {f"val_{k}": v for k, v in r.items()}

    sched = Schedule(cfg.epochs, cfg.batch_size, cfg.lr, seed=cfg.seed, bf16=cfg.bf16)
    history = fit(
        graph,
        opt,
        train_set,
        norm,
        sched,
        out,
        step,
        validate,
        device=dev,
        dist=ddp,
        resume=resume,
        progress=progress,
        ddp=False,  # the step routes through execute()/run_all(), not forward
    )
    metrics: dict[str, Any] = {}
    if ddp.main:  # rank 0 saves and measures
        net = _dynamic(graph.cpu(), cfg)
        save(net, out)
        metrics = report(net, cfg, norm, progress=progress)
        metrics["epochs"] = len(history)
        write_json(out / "metrics.json", metrics)
    ddp.close()
    return metrics


def _dynamic(graph: nn.Module, cfg: D2NNTrainConfig) -> DynamicNet:
    """The graph equipped with its controllers (greedy; off for random/static routing)."""
    bias = 0.0 if cfg.route == "learned" else None
    net = equip(graph.eval(), D2NN(bias=bias), example_inputs=torch.zeros(1, 3, 32, 32))
    return net


def score(
    net: DynamicNet, ds: dyve_data.ImageSet, norm: dyve_data.Normalization, cfg: D2NNTrainConfig
) -> dict[str, float]:
    """The run's metric and mean executed MACs of ``net`` on ``ds`` (fast back-end)."""
    net.backend = "fast"
    m = measure(net, ds, norm)
    out = {"top1": m.top1, "macs_per_sample": m.macs_mean}
    if cfg.metric == "f1":
        pred = torch.as_tensor(m.predictions)
        y = torch.as_tensor(ds.labels)
        out["f1"] = 100.0 * float(bag_f1(pred, y, len(y)).mean())  # the whole split
        out["bag_f1"] = 100.0 * float(bag_f1(pred, y, cfg.bag).mean())
    return out


def report(
    net: DynamicNet, cfg: D2NNTrainConfig, norm: dyve_data.Normalization, *, progress: bool
) -> dict[str, Any]:
    """Measure a trained run on val and test: the policy (and its bias sweep) or the
    static paths; costs are executed MACs per sample (fast back-end)."""
    from tqdm import tqdm

    graph: D2Graph = net.backbone  # type: ignore[assignment]
    full = max(graph.path_macs(c) for c in graph.static_choices())
    splits = {"val": task_data(cfg, "val"), "test": task_data(cfg, "test")}
    key = "f1" if cfg.metric == "f1" else "top1"
    points: list[dict[str, Any]] = []
    own = graph.static_actions
    if cfg.route == "learned":
        todo: list[tuple[str, Any]] = [("bias", b) for b in BIASES]
    elif cfg.route == "static":  # the one path this network was trained on
        todo = [("static", graph.static_choice())]
    else:
        todo = [("static", c) for c in graph.static_choices()]
    mech = net.mechanism("d2nn")
    for kind, value in tqdm(todo, desc="report", disable=not progress):
        if kind == "bias":
            mech.set_knob("bias", value)
            row: dict[str, Any] = {"bias": value}
        else:
            mech.set_knob("bias", None)
            graph.static_actions = value
            row = {"static": _names(graph, value)}
        for split, ds in splits.items():
            r = score(net, ds, norm, cfg)
            row.update({f"{split}_{k}": v for k, v in r.items()})
        points.append(row)
    graph.static_actions = own
    mech.set_knob("bias", 0.0 if cfg.route == "learned" else None)
    main = (
        points[0]
        if cfg.route in ("learned", "static")
        else max(points, key=lambda p: p["test_macs_per_sample"])
    )
    return {
        "model": cfg.model,
        "arch": cfg.arch,
        "route": cfg.route,
        "lam": cfg.lam,
        "metric": key,
        key: main[f"test_{key}"],
        "top1": main["test_top1"],
        "macs_per_sample": main["test_macs_per_sample"],
        "full_path_macs": full,
        "cost_reduction": full / main["test_macs_per_sample"],
        "split": "test",
        "select_split": "val",
        "cost_mode": "executed",
        "cost_convention": CONVENTION,
        "points": points,
    }


def _names(graph: D2Graph, choice: dict[str, int]) -> dict[str, str]:
    return {c: graph.specs[c].action_names[k] for c, k in choice.items()}
