"""Where an LC-Net's batch-1 time goes: fast back-end vs its dense backbone, and an op profile.

Usage: ``python benchmarks/lcnet_batch1.py RUN_DIR [IMAGES]`` (a ``dyve lcnet train`` run).
Times the fast back-end (its straight-line batch-1 path, ``dyve.mechanisms.lcnet.single``),
the same network on the generic unit/tap path, and the dense backbone, interleaved on one
thread over the first IMAGES test-b images (median of 5 passes); prints the 12 most
expensive ATen ops of 20 dynamic calls, then times one 16-channel 32x32 3x3 conv at batch 1
whole, with 5 of 16 output channels and with 5 of 16 input channels (what channel slicing
buys per layer). See NOTES.md.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
from torch.profiler import profile

from dyve import data
from dyve.dynamic import load
from dyve.models import model_info


def main(run: str, n: int = 50) -> None:
    torch.set_num_threads(1)
    net = load(run).eval()
    net.backend = "fast"
    dense = net.detach()
    ds = data.load("cifar10-jpeg", "test-b").subset(slice(0, n))
    x, _ = next(data.batches(ds, n, model_info(dense).norm))
    units = list(net.units.values())

    def generic(xi: torch.Tensor) -> torch.Tensor:
        """The network with its units' single-sample paths switched off."""
        for u in units:
            u._single = False
        try:
            return net(xi)
        finally:
            for u in units:
                u._single = True

    fns = {"lcnet_fast": net, "lcnet_generic_path": generic, "dense_eager": dense}
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        for i in range(n):  # warm up; passes every unit's checks of its single path
            net(x[i : i + 1])
        for _ in range(5):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                for i in range(n):
                    fn(x[i : i + 1])
                times[name].append(1e3 * (time.perf_counter() - t0) / n)
        with profile() as prof:
            for i in range(20):
                net(x[i : i + 1])
    med = {k: statistics.median(v) for k, v in times.items()}
    print({k: round(v, 3) for k, v in med.items()}, "ms per image, batch 1, 1 thread")
    print(
        f"speedup {med['dense_eager'] / med['lcnet_fast']:.2f}x "
        f"(generic path {med['dense_eager'] / med['lcnet_generic_path']:.2f}x)"
    )
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    print({k: round(v, 1) for k, v in sliced_convs().items()}, "us per conv, batch 1, 1 thread")


def sliced_convs(repeats: int = 300) -> dict[str, float]:
    """Median-of-5 time (us) of a batch-1 conv, whole and with channels sliced away."""
    import torch.nn.functional as F

    x, w = torch.randn(1, 16, 32, 32), torch.randn(16, 16, 3, 3)
    keep = torch.tensor([0, 3, 5, 7, 9])
    w_out, w_in, x_in = w[keep].contiguous(), w[:, keep].contiguous(), x[:, keep].contiguous()
    fns = {
        "all_16": lambda: F.conv2d(x, w, None, 1, 1),
        "out_5_of_16": lambda: F.conv2d(x, w_out, None, 1, 1),
        "in_5_of_16": lambda: F.conv2d(x_in, w_in, None, 1, 1),
    }
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        for _ in range(5):
            for k, fn in fns.items():
                t0 = time.perf_counter()
                for _ in range(repeats):
                    fn()
                times[k].append(1e6 * (time.perf_counter() - t0) / repeats)
    return {k: statistics.median(v) for k, v in times.items()}


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 50)
