"""``dyve demo``: every shipped model on the embedded CIFAR-10 sample, no network needed.

For each model with shipped weights it prints top-1 on the sample (1,000 JPEG test
images), static MACs per sample, and batch-1 latency on one thread measured interleaved
against the other models in the same run. Later methods add their rows here.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, TextIO

from dyve import data as dyve_data
from dyve._io import write_json
from dyve.cost import static_cost
from dyve.eval.evaluate import evaluate
from dyve.eval.latency import machine, model_latency
from dyve.models import create, model_info, shipped_meta, shipped_models


def run_demo(
    out: Path | None = None, *, repeats: int = 20, stream: TextIO = sys.stdout
) -> list[dict[str, Any]]:
    """Evaluate all shipped models on the embedded sample, print a table, return its rows."""
    t0 = time.time()
    sample = dyve_data.load_sample()
    names = shipped_models()
    if not names:
        print("no shipped weights found in this installation", file=stream)
        return []
    print(
        f"dyve demo: {len(names)} shipped models on the embedded sample "
        f"({len(sample)} CIFAR-10 test images, JPEG copy)",
        file=stream,
    )
    nets = {n: create(n, pretrained=True) for n in names}
    rows: list[dict[str, Any]] = []
    for n, net in nets.items():
        acc = evaluate(net, sample, model_info(net).norm)
        rows.append({"model": n, "top1_sample": acc.top1, "macs": static_cost(net).total_macs})
    lat = model_latency(nets, sample.shape, repeats=repeats, batch=1, threads=1)
    for r in rows:
        r["latency_ms_b1"] = lat[r["model"]].median_ms
        r["test_top1_full"] = shipped_meta(r["model"]).get("test_top1")
    head = (
        f"{'model':<22} {'top-1 sample':>12} {'top-1 test*':>11} {'MACs/sample':>14} "
        f"{'latency b=1':>12}"
    )
    print(head, file=stream)
    print("-" * len(head), file=stream)
    for r in rows:
        full = r["test_top1_full"]
        print(
            f"{r['model']:<22} {r['top1_sample']:>11.1f}% {full if full is not None else '-':>10}% "
            f"{r['macs'] / 1e6:>12.1f} M {r['latency_ms_b1']:>9.2f} ms",
            file=stream,
        )
    print(
        "MACs: multiply-accumulates of conv/linear per sample (static = executed for dense nets). "
        "Latency: median of "
        f"{repeats} interleaved batch-1 runs, 1 thread, on {machine()['cpu']}.\n"
        "* top-1 test: the full 10,000-image JPEG test split, from the weights' metadata "
        "(`dyve eval` reproduces it).",
        file=stream,
    )
    print(f"done in {time.time() - t0:.1f} s", file=stream)
    if out is not None:
        write_json(out / "metrics.json", {"rows": rows, "machine": machine()})
    return rows
