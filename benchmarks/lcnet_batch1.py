"""Where a gated network's batch-1 time goes: its native program against the dense one.

Usage: ``python benchmarks/lcnet_batch1.py RUN_DIR [IMAGES]`` (a ``dyve lcnet train`` run,
LC-Net or ConvNet-AIG). On one thread, over the first IMAGES test-b images, interleaved
(mean over images of each image's median, 5 visits each):

* the gated network on the fast back-end (its native program, ``fast_gated.cpp``), the
  same network per block in PyTorch (``native_program = False``), the dense backbone as a
  native program (every layer dense) and the dense backbone in eager PyTorch;
* then a per-block profile (``Program.run(x, seconds)``, batch 1): each gated block's time
  against the same block's ops in the dense program, next to the share of its MACs it
  executed (predictors included). A time share above the MAC share is what the skipping
  does not turn into time. See NOTES.md.
"""

from __future__ import annotations

import sys
from collections import defaultdict

import torch

from dyve import data
from dyve.dynamic import load
from dyve.eval.latency import cycling, interleaved
from dyve.mechanisms.dyvedeep.program import dense_program
from dyve.models import model_info

VISITS = 5


def _profile(progs: list, xs: list[torch.Tensor]) -> list[tuple[dict[str, float], torch.Tensor]]:  # type: ignore[type-arg]
    """Per program: microseconds per image of each op name (the median over VISITS passes
    of the mean over images; the programs alternate image by image, so drift hits them
    alike) and each stats row's mean MACs."""
    passes: list[list[torch.Tensor]] = [[] for _ in progs]
    stats: list[list[torch.Tensor]] = [[] for _ in progs]
    for _ in range(VISITS):
        seconds = [torch.zeros(len(p.ops), dtype=torch.float64) for p in progs]
        for x in xs:
            for k, p in enumerate(progs):
                _, st, _ = p.run(x, seconds[k])
                stats[k].append(st[:, 0, 0] + st[:, 0, 2])  # executed MACs + the predictors
        for k in range(len(progs)):
            passes[k].append(seconds[k])
    out = []
    for k, p in enumerate(progs):
        med = torch.stack(passes[k]).median(0).values
        per: dict[str, float] = defaultdict(float)
        for op, s in zip(p.ops, med.tolist(), strict=True):
            per[op["name"]] += 1e6 * s / len(xs)
        out.append((per, torch.stack(stats[k]).mean(0)))
    return out


def main(run: str, n: int = 50) -> None:
    torch.set_num_threads(1)
    net = load(run).eval()
    net.backend = "fast"
    mech = net.mechanisms[0]
    dense = net.detach()
    ds = data.load("cifar10-jpeg", "test-b").subset(slice(0, n))
    x, _ = next(data.batches(ds, n, model_info(dense).norm))
    xs = [x[i : i + 1] for i in range(n)]
    prog = mech.fast_runner(net, xs[0])
    dense_prog = mech.dense_runner(net, dense, xs[0])
    if prog is None or dense_prog is None:
        raise SystemExit(f"{run}: no native program ({mech.program_unsupported or 'knobs off'})")

    def per_block(xi: torch.Tensor) -> torch.Tensor:
        mech.native_program = False
        try:
            return net(xi)
        finally:
            mech.native_program = True

    fns = {"native": net, "per_block": per_block, "dense_native": dense_prog, "dense_eager": dense}
    with torch.no_grad():
        t = interleaved({k: cycling(f, xs) for k, f in fns.items()}, repeats=VISITS * n, cycle=n)
    ms = {k: v.mean_ms for k, v in t.items()}
    print(
        f"{run}: ms per image (mean of each image's median), batch 1, 1 thread, {n} images:",
        {k: round(v, 3) for k, v in ms.items()},
    )
    print(
        f"speedup vs dense eager: native {ms['dense_eager'] / ms['native']:.2f}x, per block "
        f"{ms['dense_eager'] / ms['per_block']:.2f}x; dense native vs dense eager "
        f"{ms['dense_eager'] / ms['dense_native']:.2f}x (the runtime's share); native vs "
        f"dense native {ms['dense_native'] / ms['native']:.2f}x (the skipped work's share)"
    )
    # the profile needs the program itself (dense_runner returns its checked call)
    (gated, stats), (plain, _) = _profile([prog, dense_program(dense, xs[0])], xs)
    names = list(prog.site_names)
    print(f"\n{'block':<12} {'dense us':>9} {'gated us':>9} {'time share':>10} {'MAC share':>9}")
    tot_d = tot_g = 0.0
    for unit in net.units:
        d = sum(v for k, v in plain.items() if k.startswith(unit + ".") or k == unit)
        g = gated[unit]
        macs = float(stats[names.index(unit)]) / net.graph.block(unit).macs
        tot_d, tot_g = tot_d + d, tot_g + g
        print(f"{unit:<12} {d:>9.1f} {g:>9.1f} {g / d:>10.2f} {macs:>9.2f}")
    rest_d = sum(plain.values()) - tot_d
    rest_g = sum(gated.values()) - tot_g
    print(f"{'blocks':<12} {tot_d:>9.1f} {tot_g:>9.1f} {tot_g / tot_d:>10.2f}")
    print(f"{'the rest':<12} {rest_d:>9.1f} {rest_g:>9.1f}")
    print("MAC share: the block's executed MACs (predictors and shortcut included) / its static")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 50)
