"""``dyve exits fit``: exit heads on a frozen backbone, learned exit policies, a real run.

See :mod:`dyve.mechanisms.adaptive.job` for what every job writes and how splits are chosen.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dyve._io import write_json
from dyve.data.core import ImageSet
from dyve.dynamic import DynamicNet, save
from dyve.eval.splits import choose_splits, heldout
from dyve.mechanisms.adaptive.early_exit import EarlyExit
from dyve.mechanisms.adaptive.graph import Outputs, PolicyGraph
from dyve.mechanisms.adaptive.heads import collect
from dyve.mechanisms.adaptive.job import (
    JobConfig,
    base_metrics,
    cached,
    executed,
    fit_heads,
    latency_images,
    latency_metrics,
    load_config,
    load_split,
    tuned_reference,
    write_study,
)
from dyve.mechanisms.adaptive.latency import annotate, stage_latency
from dyve.mechanisms.adaptive.study import run_study
from dyve.models import create, model_info
from dyve.train.dist import init


def run_exits(cfg: JobConfig, out: Path, *, progress: bool = True) -> dict[str, Any]:
    """Fit exit heads and policies for ``cfg.models[0]``; write the run into ``out``.

    Under torchrun the feature caches are computed in shards over the processes; the
    rest (heads, policies, the real run) is rank 0's, and the others return ``{}``.
    """
    ddp = init()
    model = cfg.models[0]
    backbone = create(model, pretrained=True)
    norm = model_info(backbone).norm
    net = DynamicNet(backbone)
    mech = EarlyExit(
        exits=cfg.exits, every=cfg.every, pool=cfg.pool, convs=cfg.convs, features=cfg.features
    )
    net.attach(mech)
    heads = mech.heads()
    points = list(heads)
    fit, held = choose_splits(cfg.fit_split, cfg.eval_split, heldout(model))
    load_config(out, cfg)  # after the checks above: a refused job leaves no run directory
    dense = net.detach()

    def cache(split: str) -> dict[str, Any]:
        def make(ds: ImageSet) -> dict[str, Any]:
            reads = {p: h.cached for p, h in heads.items()}
            return collect(dense, reads, ds, norm, progress=progress, desc=split)

        return cached(out, split, load_split(cfg, split), make, ddp)

    train, fit_cache, held_cache = cache("train"), cache(fit), cache(held)
    if not ddp.main:
        ddp.close()
        return {}
    head_train = fit_heads(heads, train, progress=progress)

    def node_outputs(c: dict[str, Any]) -> Outputs:
        with torch.no_grad():
            logits = {p: heads[p].from_cache(c[f"feat.{p}"]) for p in points}
        return Outputs({**logits, "final": c["logits"]}, c["labels"])

    fit_out, held_out = node_outputs(fit_cache), node_outputs(held_cache)
    g = net.graph
    through = [g.macs_through(p) for p in points]
    costs = [
        t - prev + heads[p].macs
        for p, t, prev in zip(points, through, [0, *through[:-1]], strict=True)
    ]
    graph = PolicyGraph.chain([*points, "final"], [*costs, g.total_macs - through[-1]])
    feat_dim = mech.modules[points[0]].weight.shape[1]
    study = run_study(
        graph,
        fit_out,
        held_out,
        reference="final",
        lams=cfg.lams,
        features=cfg.features,
        policy_macs=feat_dim,
        budget_pp=cfg.budget_pp,
        confidence=cfg.confidence,
        crossfit=cfg.crossfit,
        rule=cfg.rule,
        # an exit used alone: the backbone up to it plus its head; the end: the backbone
        alone={
            **{p: t + heads[p].macs for p, t in zip(points, through, strict=True)},
            "final": g.total_macs,
        },
    )
    title = f"{model}: early exit at {', '.join(points)}"
    write_study(out, study, title)  # the curves in MACs now; with latencies after timing
    mech.store_policies(study.policies)
    if study.chosen is not None:
        net.set_knobs(policy="learned", lam=study.policies[study.chosen].lam)
    save(net, out)
    ds = load_split(cfg, held)
    ran = executed(net.run, ds, cfg, norm, progress=progress)

    def forced(path: tuple[str, ...]) -> Callable[[torch.Tensor], torch.Tensor]:
        def run(x: torch.Tensor) -> torch.Tensor:
            mech.force(path[-1] if path[-1] != "final" else None)
            try:
                out: torch.Tensor = net(x)
                return out
            finally:
                mech.unforce()

        return run

    imgs = latency_images(ds, cfg, norm)
    net.freeze()  # timed as deployed (dyve.dynamic.frozen), the native reference alike
    # the backbone alone in the runtime the exits run it in (a native program, when it
    # lowers), and in PyTorch too: the baseline
    with torch.no_grad():  # as it is timed (the program runs without autograd)
        native = net.dense_runner(dense, imgs[0])
    eager, tuned = f"{model} (PyTorch)", f"{model} (PyTorch, tuned)"
    alone: dict[str, Any] = {eager: dense} if native is not None else {}
    alone[tuned] = tuned_reference(dense, imgs[0])
    alone["final"] = dense if native is None else native  # last: timed before the system
    ms, table = stage_latency(graph, forced, alone, net, imgs)
    annotate(study, table)
    write_study(out, study, title)
    lat = {
        "dynamic": ms,
        "baseline": table["alone_ms"].get(eager, table["alone_ms"]["final"]),
        "baseline_tuned": table["alone_ms"][tuned],
    }
    if native is not None:
        lat["baseline_native"] = table["alone_ms"]["final"]
    metrics = base_metrics(study, cfg, fit, held, len(ds), ran)
    metrics.update(
        method="early_exit",
        baseline=f"{model} without exits",
        model=model,
        exits=points,
        head_top1={p: study.single[p]["top1"] for p in points},
        head_convs={p: heads[p].convs for p in points},
        head_macs={p: heads[p].macs for p in points},
        head_train_top1=head_train,
        **latency_metrics(lat, len(imgs), net.frozen),
    )
    write_json(out / "metrics.json", metrics)
    ddp.close()
    return metrics
