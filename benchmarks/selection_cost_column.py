"""Does fitting selection policies on measured time instead of MACs pay? (see NOTES.md)

Usage: ``python benchmarks/selection_cost_column.py RUN_DIR`` (a ``dyve select fit`` run,
whose ``curves.json`` holds the stage latency table and ``cache/`` the networks' outputs).
For each lambda of the default grid, the learned policy is fitted on the fit split twice:
with the graph's node costs in MACs (what ``dyve select fit`` does) and with the run's
measured stage latencies (the paper's cost). Both are evaluated on the eval split, each
with its estimated batch-1 speedup from the same stage table, against the reference alone
(neither fit charges the policy its own cost, unlike the job: the two differ only in the
node costs).
"""

from __future__ import annotations

import sys
from pathlib import Path

from safetensors.torch import load_file

from dyve._io import read_json
from dyve.mechanisms.adaptive.evaluate import evaluate
from dyve.mechanisms.adaptive.graph import Node, Outputs, PolicyGraph
from dyve.mechanisms.adaptive.latency import point_latency
from dyve.mechanisms.adaptive.policy import fit_learned
from dyve.mechanisms.adaptive.study import LAMS


def main(run: str) -> None:
    curves, metrics = read_json(Path(run) / "curves.json"), read_json(Path(run) / "metrics.json")
    table = curves["latency"]
    if table is None:
        raise SystemExit(f"{run}: no stage latency table (rerun `dyve select fit`)")
    names = [n["name"] for n in curves["nodes"]]

    def outputs(split: str) -> Outputs:
        caches = {
            m: load_file(str(Path(run) / "cache" / f"{split}-{m}.safetensors")) for m in names
        }
        return Outputs({m: c["logits"] for m, c in caches.items()}, caches[names[0]]["labels"])

    fit, held = outputs(metrics["fit_split"]), outputs(metrics["split"])

    def graph(cost: dict[str, float]) -> PolicyGraph:
        full = max(cost.values())
        return PolicyGraph(
            tuple(
                Node(n["name"], cost[n["name"]] / full, tuple(n["children"]))
                for n in curves["nodes"]
            )
        )

    macs = graph({n["name"]: n["macs"] for n in curves["nodes"]})
    time = graph(table["stage_ms"])
    ref_ms = table["alone_ms"][curves["reference"]]
    ref_top1 = 100 - 100 * float(held.loss(curves["reference"]).mean())
    print(f"{run}: eval split {metrics['split']}, reference {curves['reference']} {ref_top1:.2f} %")
    print("lambda | MAC-fitted: top-1 pp, est. speedup | time-fitted: top-1 pp, est. speedup")
    for lam in LAMS:
        row = [f"{lam:6g}"]
        for g in (macs, time):
            res = evaluate(g, held, fit_learned(g, fit, lam))
            point = {"ran_fraction": res.ran_fraction}
            speed = ref_ms / point_latency(point, table["stage_ms"])
            row.append(f"{res.accuracy - ref_top1:+.2f} pp {speed:.2f}x")
        print(" | ".join(row))


if __name__ == "__main__":
    main(sys.argv[1])
