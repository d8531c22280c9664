"""Does an adaptive run's choice of lambda hold its budget on images it did not see?

Usage: ``python benchmarks/policy_selection.py RUN... [--halvings H] [--seed S] [--out F]``
(runs of ``dyve exits fit`` / ``dyve select fit`` with their caches). The adaptive counterpart of
``point_selection.py`` (DyVEDeep's points), on the fit split alone, so the split the run
reports on stays unseen:

Over ``H`` random halvings of the fit split, the whole study (:func:`run_study`: every
lambda's policy fitted, cross-fitted and judged as the run's configuration says) runs on
one half under each choice rule, and the lambda it chooses is measured on the other half:
its paired loss against the reference there, and how often that loss is over the budget.
The policies are rebuilt from the run's own files: the graph and its costs from
``curves.json``, the node outputs from the feature caches (exit logits through the run's
saved heads, :func:`dyve.dynamic.load`), the settings from ``config.json``.

A half has half the images, so each rule's bound is wider than on the whole split (fewer
lambdas pass); the question is the rate at which the chosen lambda is over budget on the
other half, against the 10 % a 90 % bound promises.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from dyve._io import read_json, write_json
from dyve.dynamic import load
from dyve.mechanisms.adaptive import study as study_mod
from dyve.mechanisms.adaptive.graph import Node, Outputs, PolicyGraph
from dyve.mechanisms.adaptive.heads import load_cache
from dyve.mechanisms.adaptive.policy import features
from dyve.mechanisms.adaptive.study import run_study

RULES = ("bound", "bonferroni")
_fit_learned = study_mod.fit_learned
_fits: dict[tuple[Any, ...], Any] = {}


def _memo_fit(graph: PolicyGraph, out: Outputs, lam: float, **kw: Any) -> Any:
    """``fit_learned``, once per data and lambda: the rules differ only in which lambdas
    they bisect to, so within a halving they share every grid lambda's fits (keyed by the
    data itself: a subset is a new object each time)."""
    first = next(iter(out.logits.values()))
    key = (
        lam,
        out.n,
        int(out.labels.sum()),
        float(first.double().sum()),
        tuple(sorted(kw.items())),
    )
    if key not in _fits:
        _fits[key] = _fit_learned(graph, out, lam, **kw)
    return _fits[key]


def _outputs(run: Path, split: str, method: str, cfg: dict[str, Any], nodes: list[str]) -> Outputs:
    """The fit split's node logits, as the job computed them from its caches."""
    if method == "network_selection":
        caches = {m: load_cache(run / "cache" / f"{split}-{m}.safetensors") for m in cfg["models"]}
        return Outputs({m: c["logits"] for m, c in caches.items()}, caches[nodes[0]]["labels"])
    cache = load_cache(run / "cache" / f"{split}.safetensors")
    mech = load(run).mechanism("early_exit")
    with torch.no_grad():
        logits = {p: h.fc(cache[f"feat.{p}"]) for p, h in mech.heads().items()}  # type: ignore[attr-defined]
    return Outputs({**logits, "final": cache["logits"]}, cache["labels"])


def check(run: Path, halvings: int, seed: int) -> dict[str, Any]:
    cfg, metrics = read_json(run / "config.json"), read_json(run / "metrics.json")
    if metrics.get("method") not in ("early_exit", "network_selection"):
        raise SystemExit(f"{run}: not a `dyve exits fit` or `dyve select fit` run")
    curves = read_json(run / "curves.json")
    graph = PolicyGraph(
        tuple(Node(n["name"], n["macs"], tuple(n["children"])) for n in curves["nodes"])
    )
    names = [n.name for n in graph.nodes]
    fit = _outputs(run, metrics["fit_split"], metrics["method"], cfg, names)
    options = {
        "reference": curves["reference"],
        "lams": tuple(cfg["lams"]),
        "features": cfg["features"],
        "policy_macs": features(fit.probs(names[0])[:1], cfg["features"]).shape[1],
        "budget_pp": cfg["budget_pp"],
        "confidence": cfg["confidence"],
        "crossfit": cfg["crossfit"],
        "alone": {k: v["macs_mean"] for k, v in curves["single"].items()},
        "thresholds": 2,  # the threshold baselines are not read here
    }
    gen = torch.Generator().manual_seed(seed)
    rows: dict[str, list[dict[str, float]]] = {r: [] for r in RULES}
    study_mod.fit_learned = _memo_fit  # type: ignore[assignment]
    for h in range(halvings):
        _fits.clear()
        perm = torch.randperm(fit.n, generator=gen)
        a, b = fit.subset(perm[: fit.n // 2]), fit.subset(perm[fit.n // 2 :])
        for rule in RULES:
            study = run_study(graph, a, b, rule=rule, **options)
            ref = study.single[study.reference]
            if study.chosen is None:
                rows[rule].append({"none": 1.0})
                continue
            pt = study.learned[study.chosen]
            rows[rule].append(
                {
                    "loss": ref["top1"] - pt["top1"],
                    "chosen_loss": pt["fit_loss_pp"],
                    "reduction": ref["macs_mean"] / pt["macs_mean"],
                }
            )
        print(f"{run.name}: halving {h + 1}/{halvings}", file=sys.stderr, flush=True)
    out: dict[str, Any] = {"run": str(run), "halvings": halvings, "seed": seed, "n": fit.n}
    for rule, rs in rows.items():
        got = [r for r in rs if "loss" in r]
        loss = torch.tensor([r["loss"] for r in got], dtype=torch.float64)
        out[rule] = {
            "no_choice": len(rs) - len(got),
            "over_budget": float((loss > cfg["budget_pp"]).double().mean()) if got else None,
            "mean_loss_other_half": float(loss.mean()) if got else None,
            "mean_loss_chosen_half": sum(r["chosen_loss"] for r in got) / len(got) if got else None,
            "mean_reduction": sum(r["reduction"] for r in got) / len(got) if got else None,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--halvings", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="also write the results there (a JSON list)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # small tensors: on a busy machine more threads only wait
    results = []
    for run in args.runs:
        results.append(check(run, args.halvings, args.seed))
        print(json.dumps(results[-1], indent=1))
    if args.out:
        write_json(args.out, results)


if __name__ == "__main__":
    main()
