"""``dyve select fit``: network selection over zoo networks, learned policies, a real run.

See :mod:`dyve.mechanisms.adaptive.job` for what every job writes and how splits are
chosen. The run keeps every fitted policy (``policies.safetensors`` + ``selection.json``);
:func:`load_selection` rebuilds the system at the chosen lambda or another.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from dyve._io import atomic_save, read_json, write_json
from dyve.errors import DyveError
from dyve.eval.splits import choose_splits, heldout
from dyve.graph import discover
from dyve.mechanisms.adaptive.graph import Outputs
from dyve.mechanisms.adaptive.heads import collect
from dyve.mechanisms.adaptive.job import (
    JobConfig,
    base_metrics,
    cached,
    executed,
    latency_images,
    latency_metrics,
    load_config,
    load_split,
    tuned_reference,
    write_study,
)
from dyve.mechanisms.adaptive.latency import ForcedPolicy, annotate, stage_latency
from dyve.mechanisms.adaptive.policy import LearnedPolicy, features
from dyve.mechanisms.adaptive.select import Selection, cascade_graph
from dyve.mechanisms.adaptive.study import run_study
from dyve.models import create, model_info
from dyve.train.dist import init

DEFAULT_NETWORKS = ("caffe_cifar10", "resnet20_cifar", "resnet56_cifar")
FORMAT = "dyve.selection/1"


def run_select(cfg: JobConfig, out: Path, *, progress: bool = True) -> dict[str, Any]:
    """Fit selection policies over ``cfg.models`` (cheapest first); write the run.

    Under torchrun each network's outputs are computed in shards over the processes; the
    rest is rank 0's, and the others return ``{}``.
    """
    if len(set(cfg.models)) != len(cfg.models) or len(cfg.models) < 2:  # before any work
        raise DyveError(f"network selection needs two or more different networks: {cfg.models}")
    ddp = init()
    nets = {m: create(m, pretrained=True) for m in cfg.models}
    norms = {model_info(n).norm for n in nets.values()}
    if len(norms) != 1:
        raise DyveError("network selection needs networks with the same input normalisation")
    norm = norms.pop()
    fit, held = choose_splits(cfg.fit_split, cfg.eval_split, all(heldout(m) for m in cfg.models))
    load_config(out, cfg)  # after the checks above: a refused job leaves no run directory

    def node_outputs(split: str) -> Outputs:
        ds = load_split(cfg, split)
        logits = {}
        for m, net in nets.items():
            make = partial(collect, net, {}, norm=norm, progress=progress, desc=m)
            c = cached(out, f"{split}-{m}", ds, make, ddp)
            logits[m], labels = c["logits"], c["labels"]
        return Outputs(logits, labels)

    fit_out, held_out = node_outputs(fit), node_outputs(held)
    if not ddp.main:
        ddp.close()
        return {}
    macs = [discover(n).total_macs for n in nets.values()]
    graph = cascade_graph(list(cfg.models), macs)
    reference = min(cfg.models, key=lambda m: fit_out.loss(m).mean().item())  # most accurate
    classes = fit_out.logits[cfg.models[0]].shape[1]
    feat_dim = features(fit_out.probs(cfg.models[0])[:1], cfg.features).shape[1]
    study = run_study(
        graph,
        fit_out,
        held_out,
        reference=reference,
        lams=cfg.lams,
        features=cfg.features,
        policy_macs=feat_dim,
        budget_pp=cfg.budget_pp,
        confidence=cfg.confidence,
        crossfit=cfg.crossfit,
        rule=cfg.rule,
        alone={n.name: n.cost for n in graph.nodes},
    )
    title = "network selection: " + " -> ".join(cfg.models)
    write_study(out, study, title)  # the curves in MACs now; with latencies after timing
    chosen = study.chosen if study.chosen is not None else 0
    save_policies(out, cfg.models, study.policies, chosen, feat_dim)
    policy = study.policies[chosen]
    system = Selection(nets, graph, policy, policy_macs=feat_dim)
    ds = load_split(cfg, held)
    ran = executed(system.run, ds, cfg, norm, progress=progress)

    def forced(path: tuple[str, ...]) -> Selection:
        forced = ForcedPolicy(policy, graph, path)
        return Selection(nets, graph, forced, policy_macs=feat_dim).freeze()

    imgs = latency_images(ds, cfg, norm)
    system.freeze()  # timed as deployed (dyve.dynamic.frozen), the references alike
    # the networks alone in the runtime the system runs them in (native programs where
    # they lower), and the reference in PyTorch too: the baseline
    native = {m: system.dense_runner(n, imgs[0]) for m, n in nets.items()}
    eager, tuned = f"{reference} (PyTorch)", f"{reference} (PyTorch, tuned)"
    alone: dict[str, Any] = {eager: nets[reference]} if native[reference] is not None else {}
    alone[tuned] = tuned_reference(nets[reference], imgs[0])
    others = [m for m in nets if m != reference] + [reference]  # last: timed before the system
    alone.update({m: nets[m] if native[m] is None else native[m] for m in others})
    ms, table = stage_latency(graph, forced, alone, system, imgs)
    annotate(study, table)
    write_study(out, study, title)
    lat = {
        "dynamic": ms,
        "baseline": table["alone_ms"].get(eager, table["alone_ms"][reference]),
        "baseline_tuned": table["alone_ms"][tuned],
    }
    if native[reference] is not None:
        lat["baseline_native"] = table["alone_ms"][reference]
    metrics = base_metrics(study, cfg, fit, held, len(ds), ran)
    metrics.update(
        method="network_selection",
        networks=list(cfg.models),
        num_classes=classes,
        **latency_metrics(lat, len(imgs), system.frozen),
    )
    write_json(out / "metrics.json", metrics)
    ddp.close()
    return metrics


def save_policies(
    out: Path, networks: tuple[str, ...], policies: list[LearnedPolicy], chosen: int, dim: int
) -> None:
    """``policies.safetensors`` (every lambda's tensors) and ``selection.json``."""
    from safetensors.torch import save_file

    tensors = {
        f"{i}.{k}": v.contiguous() for i, p in enumerate(policies) for k, v in p.state().items()
    }
    atomic_save(out / "policies.safetensors", lambda tmp: save_file(tensors, tmp))
    write_json(
        out / "selection.json",
        {
            "format": FORMAT,
            "networks": list(networks),
            "policies": [p.meta() for p in policies],
            "chosen": chosen,
            "policy_macs": dim,
        },
    )


def load_selection(run: str | Path, lam: float | None = None) -> Selection:
    """Rebuild a saved selection system (shipped zoo weights), at the chosen or given lambda."""
    from safetensors.torch import load_file

    run = Path(run)
    desc = read_json(run / "selection.json")
    if not isinstance(desc, dict) or desc.get("format") != FORMAT:
        raise DyveError(f"{run}: not a network-selection run (no {FORMAT} selection.json)")
    lams = [p["lam"] for p in desc["policies"]]
    if lam is not None and lam not in lams:
        raise DyveError(f"{run}: lambda {lam} was not fitted; fitted: {lams}")
    i = desc["chosen"] if lam is None else lams.index(lam)
    tensors = load_file(str(run / "policies.safetensors"))
    mine = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.split(".", 1)[0] == str(i)}
    policy = LearnedPolicy.from_state(desc["policies"][i], mine)
    nets = {m: create(m, pretrained=True) for m in desc["networks"]}
    graph = cascade_graph(desc["networks"], [discover(n).total_macs for n in nets.values()])
    return Selection(nets, graph, policy, policy_macs=float(desc["policy_macs"]))
