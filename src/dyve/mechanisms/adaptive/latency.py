"""Stage latencies: the policy graph's second cost column, and every curve point in ms.

The study fits and sweeps in MACs (exact and portable). The paper's costs are measured
evaluation times, and the spec keeps a per-stage table with both columns, the cost of a
sample being the sum over the stages it visited. :func:`stage_latency` measures that table
on the real system, at batch 1 on one thread over real images, interleaved in one run
(:func:`~dyve.mechanisms.adaptive.job.mean_latency`) with the chosen system and each
network alone:

* for every node, the system *forced* along the cheapest path from the root to it (the
  fitted policy is still asked at every node it passes, so its cost is paid; the answer
  is overridden): ``path_ms[node]``;
* a node's stage latency is ``path_ms[node] - path_ms[previous node on that path]``: its
  network or segment and head, plus the policy's decision there.

:func:`annotate` then gives every point of the study (learned lambdas, threshold
baselines, oracle, single nodes) ``latency_ms`` = the sum over nodes of the share of
samples that evaluated the node times its stage latency, and ``speedup_est`` against the
reference run alone. It is an estimate (stages are taken as additive); the chosen point is
also executed and timed in the same run, and the results page shows both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dyve.eval.latency import machine
from dyve.mechanisms.adaptive.graph import PolicyGraph
from dyve.mechanisms.adaptive.job import mean_latency
from dyve.mechanisms.adaptive.policy import Policy
from dyve.mechanisms.adaptive.study import Study

#: what a forced system is built from: the node names of a path from the root
Forced = Callable[[tuple[str, ...]], Callable[[Tensor], Any]]


@dataclass(frozen=True)
class ForcedPolicy:
    """Every sample follows ``path`` (from the root) and stops at its last node.

    ``inner`` is still asked at each node, and its answer thrown away, so a timed run pays
    what the real policy costs there.
    """

    inner: Policy
    graph: PolicyGraph
    path: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.path or self.path[0] != self.graph.names[0]:
            raise ValueError(f"a forced path starts at the root {self.graph.names[0]!r}")
        for a, b in zip(self.path, self.path[1:], strict=False):
            if b not in self.graph.node(a).children:
                raise ValueError(f"{b!r} is not a child of {a!r}")

    def decide(self, node: str, probs: Tensor) -> tuple[Tensor, Tensor]:
        """Bool ``[N]`` stop and int64 ``[N]`` child index, the same for every sample."""
        self.inner.decide(node, probs)
        n, dev = probs.shape[0], probs.device
        if node == self.path[-1]:
            return torch.ones(n, dtype=torch.bool, device=dev), torch.full((n,), -1, device=dev)
        j = self.graph.node(node).children.index(self.path[self.path.index(node) + 1])
        return torch.zeros(n, dtype=torch.bool, device=dev), torch.full((n,), j, device=dev)

    def decide_one(self, node: str, probs: Sequence[float]) -> int | None:
        """:meth:`decide` for one sample (the batch-1 path)."""
        self.inner.decide_one(node, probs)
        if node == self.path[-1]:
            return None
        return self.graph.node(node).children.index(self.path[self.path.index(node) + 1])


def stage_latency(
    graph: PolicyGraph,
    forced: Forced,
    alone: dict[str, Callable[[Tensor], Any]],
    dynamic: Callable[[Tensor], Any],
    images: list[Tensor],
) -> tuple[float, dict[str, Any]]:
    """Time ``dynamic``, each of ``alone`` (name -> network run on its own; the reference
    last) and the system forced to each node, interleaved; the dynamic system's mean ms
    and the stage table."""
    paths = {name: path for name, (_, path) in graph.cheapest_paths().items()}
    # round-robin order: the forced runs, the networks alone, then the system, right after
    # the last of those (its reference: pass it last), as `dyve bench` orders them. A call
    # right after another that shares its programs (the system after itself forced) runs
    # faster than after a different network (benchmarks/timing_order.py), so the system
    # never follows its forced runs; those follow one another, so the estimates are those
    # of back-to-back calls.
    fns: dict[str, Callable[[Tensor], Any]] = {f"path:{n}": forced(p) for n, p in paths.items()}
    fns.update({f"alone:{k}": fn for k, fn in alone.items()})
    fns["dynamic"] = dynamic
    t = mean_latency(fns, images)
    path_ms = {n: t[f"path:{n}"] for n in paths}
    stage_ms = {n: path_ms[n] - (path_ms[p[-2]] if len(p) > 1 else 0.0) for n, p in paths.items()}
    table = {
        "stage_ms": stage_ms,
        "path_ms": path_ms,
        "paths": {n: list(p) for n, p in paths.items()},
        "alone_ms": {k: t[f"alone:{k}"] for k in alone},
        "images": len(images),
        "batch": 1,
        "threads": 1,
        "machine": machine(),
    }
    return t["dynamic"], table


def point_latency(point: dict[str, Any], stage_ms: dict[str, float]) -> float:
    """A curve point's estimated mean ms: the stage latencies weighted by ``ran_fraction``."""
    return float(sum(point["ran_fraction"][n] * ms for n, ms in stage_ms.items()))


def annotate(study: Study, table: dict[str, Any]) -> None:
    """Give every point of ``study`` ``latency_ms`` and ``speedup_est``; keep ``table``.

    A single node's point is the network alone where it was timed alone (a selection's
    networks), else its path's estimate; the reference is always timed alone.
    """
    ref = table["alone_ms"][study.reference]

    def put(p: dict[str, Any], ms: float | None = None) -> None:
        p["latency_ms"] = point_latency(p, table["stage_ms"]) if ms is None else ms
        p["speedup_est"] = ref / p["latency_ms"]

    for p in [*study.learned, *study.baselines["max_prob"], *study.baselines["entropy"]]:
        put(p)
    put(study.oracle)
    for name, p in study.single.items():
        put(p, table["alone_ms"].get(name))
    study.latency = table
