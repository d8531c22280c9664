"""The accuracy-versus-cost study of one policy graph, computed from cached outputs.

Shared by early exit and network selection: given the graph (nodes with their MACs),
cached node logits on the fit split and the eval split, it fits the learned policy for
each lambda on the fit split, sweeps the threshold baselines, adds the oracle and every
single node, evaluates all of them once on the eval split, and picks the operating point
(cheapest learned policy within the accuracy budget *on the fit split*, so the eval split
is never tuned on; with ``confidence``, the budget holds the one-sided upper confidence
bound of the policy's paired loss against the reference, :mod:`dyve.eval.paired`, since
the cheapest policy that passes on the split it was fitted on loses more on others; with
``crossfit`` the loss is measured out of sample: each lambda's policy is also fitted on
one half of the fit split and judged on the other, both ways, and the paired counts of
the two halves decide, while the policy kept is the one fitted on the whole split;
``rule`` says how the cheapest of the lambdas that pass is chosen, by default with the
bound widened for the number of lambdas compared, the grid and the bisection's, fixed in
advance, :func:`dyve.eval.paired.choose`; each row's ``fit_loss_bound_pp`` is that
widened bound).
Costs are MACs per sample (:data:`dyve.cost.CONVENTION`); the policy graph works in
units of the most expensive single path (lambda = loss per full cost).
Every point keeps which nodes its samples evaluated (``ran_fraction``), from which
:mod:`~dyve.mechanisms.adaptive.latency` adds its estimated batch-1 latency.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dyve._io import atomic_save
from dyve.cost import CONVENTION
from dyve.eval.paired import (
    DEFAULT_RULE,
    PairedLoss,
    check_confidence,
    check_rule,
    choose,
    family_confidence,
    passing,
)
from dyve.mechanisms.adaptive.evaluate import (
    PolicyResult,
    evaluate,
    evaluate_node,
    oracle,
    sweep_threshold,
    threshold_grid,
)
from dyve.mechanisms.adaptive.graph import Node, Outputs, PolicyGraph
from dyve.mechanisms.adaptive.policy import LearnedPolicy, fit_learned

#: default lambda grid: from "accuracy first" to "cost first" (loss per full cost)
LAMS = (
    *(0.0, 0.002, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1),
    *(0.125, 0.15, 0.2, 0.3, 0.5, 1.0),
)


@dataclass
class Study:
    """Everything one study computed; :meth:`as_dict` is what ``curves.json`` holds."""

    graph: PolicyGraph  # costs in MACs
    reference: str  # the node whose single-path accuracy is the baseline
    policies: list[LearnedPolicy]
    learned: list[dict[str, Any]]
    baselines: dict[str, list[dict[str, Any]]]
    single: dict[str, dict[str, Any]]
    oracle: dict[str, Any]
    chosen: int | None  # index into ``learned``
    budget_pp: float
    confidence: float | None
    crossfit: bool
    #: how the operating point is chosen among the lambdas (:func:`dyve.eval.paired.choose`)
    rule: str
    #: the stage latency table once measured (:func:`~dyve.mechanisms.adaptive.latency.annotate`)
    latency: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": "dyve.adaptive-curves/1",
            "cost_convention": CONVENTION,
            "nodes": [
                {"name": n.name, "macs": n.cost, "children": n.children} for n in self.graph.nodes
            ],
            "reference": self.reference,
            "budget_pp": self.budget_pp,
            "confidence": self.confidence,
            "crossfit": self.crossfit,
            "rule": self.rule,
            "learned": self.learned,
            "baselines": self.baselines,
            "single": self.single,
            "oracle": self.oracle,
            "chosen": self.chosen,
            "latency": self.latency,
        }


def _point(
    res: PolicyResult, ref_macs: float, macs: float | None = None, **extra: Any
) -> dict[str, Any]:
    cost = res.mean_cost if macs is None else macs
    return {
        **extra,
        "top1": round(res.accuracy, 3),
        "macs_mean": cost,
        "cost_reduction": ref_macs / cost,
        "stop_fraction": {k: round(v, 4) for k, v in res.stop_fraction.items()},
        "ran_fraction": {k: round(v, 4) for k, v in res.ran_fraction.items()},
    }


def run_study(
    graph: PolicyGraph,
    fit: Outputs,
    held: Outputs,
    *,
    reference: str,
    lams: tuple[float, ...] = LAMS,
    features: str = "both",
    policy_macs: float = 0.0,
    budget_pp: float = 1.0,
    confidence: float | None = 0.9,
    crossfit: bool = True,
    rule: str = DEFAULT_RULE,
    thresholds: int = 41,
    alone: dict[str, float] | None = None,
    refine: int = 4,
) -> Study:
    """Fit on ``fit``, evaluate on ``held`` (see the module docstring).

    ``alone`` is each node's MACs when it is used on its own, the cost of the single
    nodes and of the reference (default: its cheapest path from the root, right for exits
    of one network; a selection's networks run alone cost only themselves). After the
    ``lams`` sweep, up to ``refine`` more lambdas bisect between the cheapest one within
    the budget and the next one that is not (the curve keeps every fitted lambda).
    """
    check_confidence(confidence)
    check_rule(rule)
    k = len(lams) + refine  # the lambdas compared, fixed before the first is fitted
    held_to = family_confidence(confidence, rule, k)
    if crossfit and fit.n < 4:
        raise ValueError(f"cross-fitting needs at least 4 fit images, got {fit.n}")
    paths = graph.cheapest_paths()
    full = max(c for c, _ in paths.values())
    alone = alone if alone is not None else {k: c for k, (c, _) in paths.items()}
    unit = PolicyGraph(tuple(Node(n.name, n.cost / full, n.children) for n in graph.nodes))
    ref_fit = evaluate_node(graph, fit, reference)
    ref_macs = alone[reference]
    pc = policy_macs / full
    fitted: dict[float, tuple[LearnedPolicy, dict[str, Any], PairedLoss]] = {}

    ref_ok = ref_fit.correct.numpy()
    halves = (torch.arange(0, fit.n, 2), torch.arange(1, fit.n, 2))

    def judged(lam: float, on_fit: PolicyResult) -> PairedLoss:
        """The paired loss on the fit split: in sample, or cross-fitted over its halves."""
        if not crossfit:
            return PairedLoss.of(ref_ok, on_fit.correct.numpy())
        worse = better = 0
        for a, b in (halves, halves[::-1]):
            pol = fit_learned(unit, fit.subset(a), lam, features=features, policy_cost=pc)
            res = evaluate(graph, fit.subset(b), pol, policy_cost=policy_macs)
            part = PairedLoss.of(ref_ok[b.numpy()], res.correct.numpy())
            worse, better = worse + part.worse, better + part.better
        return PairedLoss(fit.n, worse, better)

    def add(lam: float) -> None:
        pol = fit_learned(unit, fit, lam, features=features, policy_cost=pc)
        on_fit = evaluate(graph, fit, pol, policy_cost=policy_macs)
        on_held = evaluate(graph, held, pol, policy_cost=policy_macs)
        paired = judged(lam, on_fit)
        bound = paired.bound_pp(held_to)
        row = _point(
            on_held,
            ref_macs,
            lam=lam,
            fit_top1=round(on_fit.accuracy, 3),
            fit_macs_mean=on_fit.mean_cost,
            fit_loss_pp=round(paired.loss_pp, 3),
            fit_loss_bound_pp=round(bound, 3),
        )
        fitted[lam] = (pol, row, paired)

    def points() -> list[dict[str, Any]]:  # the lambdas in order, as the rule reads them
        return [
            {"step": lam, "worse": pl.worse, "better": pl.better, "cost": row["fit_macs_mean"]}
            for lam, (_, row, pl) in sorted(fitted.items())
        ]

    def best() -> float | None:  # the cheapest lambda the rule lets within the budget
        return choose(points(), fit.n, budget_pp, confidence, "cost", rule, k)

    for lam in lams:
        add(lam)
    for _ in range(refine):  # bisect towards the budget's edge above the best lambda
        b = best()
        within = {p["step"] for p in passing(points(), fit.n, budget_pp, confidence, rule, k)}
        above = sorted(lam for lam in fitted if b is not None and lam > b and lam not in within)
        if b is None or not above or above[0] - b < 1e-4:
            break
        add(round((b + above[0]) / 2, 6))
    order = sorted(fitted)
    policies = [fitted[lam][0] for lam in order]
    learned = [fitted[lam][1] for lam in order]
    b = best()
    chosen = None if b is None else order.index(b)
    classes = next(iter(held.logits.values())).shape[1]
    baselines = {
        kind: [
            _point(res, ref_macs, threshold=t)
            for t, _, res in sweep_threshold(
                graph, held, kind, threshold_grid(kind, thresholds, classes)
            )
        ]
        for kind in ("max_prob", "entropy")
    }
    single = {
        n.name: _point(evaluate_node(graph, held, n.name), ref_macs, alone[n.name])
        for n in graph.nodes
    }
    return Study(
        graph,
        reference,
        policies,
        learned,
        baselines,
        single,
        _point(oracle(graph, held), ref_macs),
        chosen,
        budget_pp,
        confidence,
        crossfit,
        rule,
    )


def plot(study: Study, path: str | os.PathLike[str], title: str) -> Path:
    """``path`` (PNG): top-1 vs mean MACs for the learned policy, baselines, oracle, nodes;
    beside it top-1 vs estimated batch-1 latency once the stage latencies are measured."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    timed = study.latency is not None
    fig = Figure(figsize=(11.5 if timed else 6.4, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if timed else 1, squeeze=False)[0]
    macs = "mean MACs per sample (millions; multiply-accumulates, FLOPs = 2 x MACs)"
    scales = [("macs_mean", 1e6, macs)]
    if timed:
        scales.append(("latency_ms", 1.0, "estimated mean latency (ms; batch 1, one thread)"))
    for ax, (key, m, xlabel) in zip(axes, scales, strict=True):
        _panel(ax, study, key, m, xlabel)
    fig.suptitle(title, fontsize=9)
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png"))
    return Path(path)


def _panel(ax: Any, study: Study, key: str, m: float, xlabel: str) -> None:
    """One plot of top-1 against the points' ``key`` (divided by ``m``)."""

    def line(pts: list[dict[str, Any]], label: str, style: str) -> None:
        xy = sorted((p[key] / m, p["top1"]) for p in pts)
        ax.plot([x for x, _ in xy], [y for _, y in xy], style, label=label, ms=4)

    line(study.learned, "learned policy (lambda sweep)", "o-")
    line(study.baselines["max_prob"], "max-probability threshold", "s--")
    line(study.baselines["entropy"], "entropy threshold", "^:")
    ax.plot(study.oracle[key] / m, study.oracle["top1"], "k*", ms=10, label="oracle")
    for name, p in study.single.items():
        ax.plot(p[key] / m, p["top1"], "kx")
        ax.annotate(name, (p[key] / m, p["top1"]), fontsize=7)
    if study.chosen is not None:
        c = study.learned[study.chosen]
        ax.plot(c[key] / m, c["top1"], "ro", ms=9, mfc="none", label="chosen on fit split")
    ax.set_xlabel(xlabel, fontsize=7)
    ax.set_ylabel("top-1 (%) on the evaluation split")
    ax.legend(fontsize=7)
