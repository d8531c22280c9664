"""Does what runs before a timed call change its time? Early exit, batch 1, one thread.

An early exit runs its backbone as native programs between the exit points; the adaptive
job times it interleaved with the dense network (eager and native) and with itself forced
along each path (the stage table). This times the same early exit three ways, on the same
test-b images, median of repeats per image, mean over images:

* *back to back*: each system timed alone, call after call (a deployed model's state);
* *after another network* (`dyve bench`'s order: dense eager, dense native, early exit);
* *after itself forced*: the early exit timed right after the same network forced to its
  last exit (the order the adaptive job used before session 21), which shares its programs.

    python benchmarks/timing_order.py                      # the shipped early exit
    python benchmarks/timing_order.py --run runs/adaptive/exits_resnet56_conv --images 100
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dyve import data
from dyve.demo import runs_dir
from dyve.dynamic import load
from dyve.eval.latency import cycling, interleaved, machine, num_threads
from dyve.mechanisms.dyvedeep.program import dense_reference
from dyve.models import create, model_info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=runs_dir() / "early_exit_resnet56")
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--passes", type=int, default=3, help="timed calls per image")
    args = ap.parse_args()
    net = load(args.run, backbone=create("resnet56_cifar", pretrained=True)).eval()
    dense, mech = net.detach().eval(), net.mechanisms[0]
    norm = model_info(net.backbone).norm
    test = data.load("cifar10-jpeg", "test-b").subset(slice(0, args.images))
    x, _ = next(data.batches(test, args.images, norm))
    imgs = [x[i : i + 1] for i in range(len(x))]
    net.freeze()

    def forced_last(t: torch.Tensor) -> torch.Tensor:
        mech.force(None)  # type: ignore[attr-defined]
        try:
            out: torch.Tensor = net(t)
            return out
        finally:
            mech.unforce()  # type: ignore[attr-defined]

    with torch.no_grad():
        native = dense_reference(dense, imgs[0], frozen=True)
        if native is None:
            raise SystemExit("the native kernels are unavailable: nothing to compare")
        fns: dict[str, Callable[[torch.Tensor], Any]] = {
            "eager": dense,
            "native": native,
            "early exit": net,
            "forced": forced_last,
        }
        calls = {k: cycling(f, imgs) for k, f in fns.items()}
        reps, n = args.passes * len(imgs), len(imgs)
        with num_threads(1):
            rows = {
                "back to back": {
                    k: interleaved({k: calls[k]}, repeats=reps, cycle=n)[k].mean_ms
                    for k in ("eager", "native", "early exit")
                },
                "after another network": {
                    k: t.mean_ms
                    for k, t in interleaved(
                        {k: calls[k] for k in ("eager", "native", "early exit")},
                        repeats=reps,
                        cycle=n,
                    ).items()
                },
                "after itself forced": {
                    k: t.mean_ms
                    for k, t in interleaved(
                        {k: calls[k] for k in ("early exit", "native", "eager", "forced")},
                        repeats=reps,
                        cycle=n,
                    ).items()
                },
            }
    m = machine()
    print(f"{args.run}, {n} test-b images, batch 1, 1 thread; {m['cpu']}, torch {m['torch']}")
    print("| order | eager ms | native ms | early exit ms | vs eager | vs native |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        e, nat, d = r["eager"], r["native"], r["early exit"]
        print(f"| {name} | {e:.2f} | {nat:.2f} | {d:.2f} | {e / d:.2f}x | {nat / d:.2f}x |")


if __name__ == "__main__":
    main()
