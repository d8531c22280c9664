"""Where an LC-Net's batch-1 time goes: fast back-end vs its dense backbone, and an op profile.

Usage: ``python benchmarks/lcnet_batch1.py RUN_DIR [IMAGES]`` (a ``dyve lcnet train`` run).
Times both interleaved on one thread over the first IMAGES test-b images (median of 5
passes), then prints the 12 most expensive ATen ops of 20 dynamic calls. See NOTES.md.
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
    times: dict[str, list[float]] = {"lcnet_fast": [], "dense_eager": []}
    with torch.no_grad():
        for _ in range(5):
            for name, fn in (("lcnet_fast", net), ("dense_eager", dense)):
                t0 = time.perf_counter()
                for i in range(n):
                    fn(x[i : i + 1])
                times[name].append(1e3 * (time.perf_counter() - t0) / n)
        with profile() as prof:
            for i in range(20):
                net(x[i : i + 1])
    med = {k: statistics.median(v) for k, v in times.items()}
    print({k: round(v, 3) for k, v in med.items()}, "ms per image, batch 1, 1 thread")
    print(f"speedup {med['dense_eager'] / med['lcnet_fast']:.2f}x")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 50)
