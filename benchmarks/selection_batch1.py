"""Where a network selection's batch-1 time goes: routing overhead against the networks it ran.

Usage: ``python benchmarks/selection_batch1.py RUN_DIR [IMAGES]`` (a ``dyve select fit`` run).
On the first IMAGES test-b images, one thread, interleaved, median of 3 passes per image:
the selection's ``forward`` (no trace), its ``run`` (with the trace's bookkeeping), every
network alone, per image the sum of the networks that the selection ran for it, and the
policy alone (softmax and decisions on those networks' logits). The
difference between ``forward`` and that sum is what routing costs (softmax, policy features
and classifiers, index bookkeeping) plus any slowdown of the networks when they run back to
back instead of alone. See NOTES.md.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from dyve import data
from dyve.mechanisms.adaptive.select_job import load_selection
from dyve.models import model_info


def main(run: str, n: int = 200) -> None:
    torch.set_num_threads(1)
    sel = load_selection(run)
    names = list(sel.graph.names)
    norm = model_info(sel.networks[names[0]]).norm
    ds = data.load("cifar10-jpeg", "test-b").subset(slice(0, n))
    x, _ = next(data.batches(ds, n, norm))
    images = [x[i : i + 1] for i in range(n)]
    fns = {"forward": sel, "run": sel.run, **{k: sel.networks[k] for k in names}}
    times: dict[str, list[list[float]]] = {k: [[] for _ in images] for k in fns}
    with torch.no_grad():
        ran = [[k for k in names if int(sel.run(im).trace.units[k][0]) == 0] for im in images]
        for _ in range(3):
            for i, im in enumerate(images):
                for k, fn in fns.items():
                    t0 = time.perf_counter()
                    fn(im)
                    times[k][i].append(1e3 * (time.perf_counter() - t0))
        # the policy alone: softmax + decide on the logits of every deciding node it ran
        logits = {k: sel.networks[k](x) for k in names if sel.graph.node(k).children}
        policy = []
        for _ in range(3):
            t0 = time.perf_counter()
            for i in range(n):
                for k in ran[i]:
                    if k in logits:
                        probs = torch.softmax(logits[k][i : i + 1].float(), 1)[0].tolist()
                        sel.policy.decide_one(k, probs)  # what forward runs at batch 1
            policy.append(1e3 * (time.perf_counter() - t0) / n)
    per = {k: [statistics.median(t) for t in v] for k, v in times.items()}
    mean = {k: sum(v) / n for k, v in per.items()}
    path = sum(sum(per[k][i] for k in ran[i]) for i in range(n)) / n
    print({k: round(v, 3) for k, v in mean.items()}, "ms per image, batch 1, 1 thread")
    print(f"networks on each image's path: {path:.3f} ms; routing: {mean['forward'] - path:.3f} ms")
    print(
        f"of which the policy (softmax, features, classifiers): {statistics.median(policy):.3f} ms"
    )
    print(f"trace bookkeeping (run - forward): {mean['run'] - mean['forward']:.3f} ms")
    ref = names[-1]
    print(
        f"speedup vs {ref}: {mean[ref] / mean['forward']:.2f}x measured, "
        f"{mean[ref] / path:.2f}x if routing were free"
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 200)
