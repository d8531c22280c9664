"""Latency measurement: median of repeats, interleaved against a reference in the same run.

Rules this module enforces (see ``benchmarks/NOTES.md``): batch-1 latency on **one
thread** (two threads at batch 1 are erratic on small CPUs), batch-64 throughput on all
threads, and candidates timed *interleaved* with the dense reference, so that a speedup is
a ratio measured under the same machine state.
"""

from __future__ import annotations

import itertools
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch


@dataclass(frozen=True)
class Timing:
    """Median and spread of repeated timings, in milliseconds.

    ``mean_ms``: over the inputs a callable cycles through (``interleaved(cycle=N)``), the
    mean of each input's median time. A dynamic model's time depends on its input, so the
    median call is the time of a *typical* input while ``mean_ms`` is what the inputs cost
    on average: speedups of dynamic models are ratios of ``mean_ms``. With one input the
    two are the same.
    """

    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int
    mean_ms: float

    def as_dict(self) -> dict[str, float]:
        """JSON-ready form."""
        return {k: round(v, 4) for k, v in self.__dict__.items()}


def cycling(fn: Callable[[Any], Any], items: Sequence[Any]) -> Callable[[], Any]:
    """A no-argument callable that applies ``fn`` to the next item, round and round."""
    it = itertools.cycle(items)
    return lambda: fn(next(it))


@contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def interleaved(
    fns: dict[str, Callable[[], Any]], *, repeats: int = 30, warmup: int = 3, cycle: int = 1
) -> dict[str, Timing]:
    """Time each callable ``repeats`` times, round-robin, after ``warmup`` untimed rounds.

    ``cycle``: every callable steps through that many inputs in turn (:func:`cycling` over
    the same inputs), so timed call ``j`` of each is on the same input; ``mean_ms`` is the
    mean over inputs of each input's median (see :class:`Timing`).

    Example:
        >>> t = interleaved({"dense": lambda: model(x), "fast": lambda: fast(x)})  # doctest: +SKIP
        >>> t["dense"].median_ms / t["fast"].median_ms   # speedup, same run
    """
    if repeats < 1 or cycle < 1:
        raise ValueError("repeats and cycle must be >= 1")
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(warmup + repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            dt = (time.perf_counter() - t0) * 1e3
            if r >= warmup:
                samples[name].append(dt)
    out = {}
    for name, s in samples.items():
        q = statistics.quantiles(s, n=10, method="inclusive") if len(s) > 1 else [s[0]] * 9
        per_input = [statistics.median(s[i::cycle]) for i in range(min(cycle, len(s)))]
        out[name] = Timing(statistics.median(s), q[0], q[-1], len(s), statistics.fmean(per_input))
    return out


@torch.no_grad()
def model_latency(
    models: dict[str, torch.nn.Module],
    input_shape: tuple[int, int, int],
    *,
    repeats: int = 30,
    batch: int = 1,
    threads: int | None = 1,
) -> dict[str, Timing]:
    """Interleaved latency of several models on a random batch (eval mode, no grad)."""
    x = torch.randn(batch, *input_shape)
    for m in models.values():
        m.eval()
    with num_threads(threads):
        fns: dict[str, Callable[[], Any]] = {k: partial(m, x) for k, m in models.items()}
        return interleaved(fns, repeats=repeats)


def machine() -> dict[str, Any]:
    """What the timings ran on (recorded next to every timing)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import os

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads_default": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def compare(
    candidate: torch.nn.Module,
    reference: torch.nn.Module,
    input_shape: tuple[int, int, int],
    *,
    repeats: int = 30,
    batch_large: int = 64,
) -> dict[str, Any]:
    """Candidate against a dense reference, interleaved in one run.

    Batch 1 on one thread (median latency) and batch ``batch_large`` on all threads
    (throughput in images/s), with the speedups as ratios of medians from the same run.
    """
    pair = {"candidate": candidate, "reference": reference}
    b1 = model_latency(pair, input_shape, repeats=repeats, batch=1, threads=1)
    bl = model_latency(
        pair, input_shape, repeats=max(3, repeats // 3), batch=batch_large, threads=None
    )
    return {
        "b1_ms": {k: v.as_dict() for k, v in b1.items()},
        f"b{batch_large}_images_per_s": {
            k: round(batch_large / (v.median_ms / 1e3), 1) for k, v in bl.items()
        },
        "speedup_b1": b1["reference"].median_ms / b1["candidate"].median_ms,
        f"speedup_b{batch_large}": bl["reference"].median_ms / bl["candidate"].median_ms,
        "machine": machine(),
    }
