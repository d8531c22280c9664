"""The Python around a native program's call, measured right after real runs (batch 1).

``net(x)`` on the fast back-end checks that the kept program is still valid, then calls
it. Timed with a no-op kernel that Python costs a few tens of microseconds; timed around
the real kernel it costs two to three times more, because the kernel has just pushed the
Python objects the check reads out of the CPU's caches. This script measures it that
way: the native call is wrapped, and the time from entering each variant to the kernel's
start (*pre*) and from the kernel's end to the return (*post*) is the median over calls.

    python benchmarks/call_overhead.py                       # VGG-16 and ResNet-56
    python benchmarks/call_overhead.py --models resnet56_cifar --calls 1000
    python benchmarks/call_overhead.py --models runs/lcnet/lcnet_l16_c008  # a run directory

Variants: ``program`` (the program called directly: no check), ``valid + program``,
``net(x)`` (what a user calls), ``net(x), frozen`` (after ``net.freeze()``: the input,
dtype and knobs checked, the weights not; :mod:`dyve.dynamic.frozen`). A zoo name runs
at its least-time calibrated point (``docs/results/dyvedeep-time``); a run directory
(LC-Net, ConvNet-AIG, DyVEDeep) is loaded with :func:`dyve.dynamic.load`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from dyvedeep_speed import build

from dyve.dynamic import load
from dyve.eval.latency import machine, num_threads


class _Timed:
    """Stands in for the kernels' library: records when each native call starts and ends."""

    def __init__(self, dll: Any) -> None:
        self.dll, self.start, self.end = dll, [0.0], [0.0]

    def dyve_program(self, ref: Any) -> int:
        self.start.append(time.perf_counter())
        rc = self.dll.dyve_program(ref)
        self.end.append(time.perf_counter())
        return int(rc)


def measure(name: str, calls: int) -> dict[str, tuple[float, float]]:
    """Median microseconds (pre, post) of each variant, the variants interleaved."""
    net = (load(name) if Path(name).is_dir() else build(name, "time")).eval()
    net.backend = "fast"
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        net(x)
        prog = net.mechanisms[0]._program
        assert prog is not None, f"{name} did not lower to a program"
        timed = prog._dll = _Timed(prog._dll)

        def frozen() -> Any:  # as after net.freeze(): the same program, its weights unchecked
            prog.frozen = True
            try:
                return net(x)
            finally:
                prog.frozen = False

        variants: dict[str, Callable[[], Any]] = {
            "program": lambda: prog(x),
            "valid + program": lambda: (prog.valid(x), prog(x)),
            "net(x)": lambda: net(x),
            "net(x), frozen": frozen,
        }
        pre: dict[str, list[float]] = {k: [] for k in variants}
        post: dict[str, list[float]] = {k: [] for k in variants}
        for i in range(calls + 20):
            for k, fn in variants.items():
                t0 = time.perf_counter()
                fn()
                t1 = time.perf_counter()
                if i >= 20:  # warm-up
                    pre[k].append(timed.start[-1] - t0)
                    post[k].append(t1 - timed.end[-1])
        prog._dll = timed.dll
    return {k: (statistics.median(pre[k]) * 1e6, statistics.median(post[k]) * 1e6) for k in pre}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["vgg16_bn_cifar_w025", "resnet56_cifar"])
    ap.add_argument("--calls", type=int, default=400)
    args = ap.parse_args()
    m = machine()
    print(f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}; batch 1, 1 thread")
    print("model | variant | before the kernel (us) | after it (us)")
    with num_threads(1):
        for name in args.models:
            for k, (a, b) in measure(name, args.calls).items():
                print(f"{name} | {k} | {a:.1f} | {b:.1f}")


if __name__ == "__main__":
    main()
