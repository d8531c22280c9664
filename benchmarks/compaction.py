"""What batch compaction buys on this CPU: masking, gather/scatter and grouping by pattern.

Run on an otherwise idle machine (a few minutes on 2 cores):

    python benchmarks/compaction.py --out benchmarks/results/compaction.json

The non-downsampling blocks of one ResNet-56 stage (``layer2``: 8 blocks of 32 channels at
16x16) get per-sample skip decisions at skip rates 0/25/50/75 % (fixed random masks, each
with exactly that share of skipped (sample, block) pairs). Two kinds of masks:

* ``iid``: every (sample, block) pair drawn independently: at batch 64 almost every sample
  has its own pattern, the worst case for grouping;
* ``k<K>`` (``--patterns K``, default 4): each sample takes one of K stage patterns, as a
  policy with a few modes would produce.

Each mask is timed, interleaved in one run (``dyve.eval.latency.interleaved``), for:
dense (every block runs), ``masked`` (``runtime.masked`` per block: emulated back-end),
``gather_scatter`` (``runtime.gather_scatter`` per block: the fast back-end),
``grouped`` (``runtime.run_grouped`` over the stage: one gather/scatter per pattern), and
``ideal`` = dense x executed fraction. Batch 64 on 2 threads; batch 1 on 1 thread, where
each call takes the next image and its mask row (cycling), so the timed calls see the
stage's executed fraction. Finally the per-gate overhead at batch 1: 8 blocks each wrapped
in a ``dyve.dynamic.unit.Unit`` (no gate / a BlockSkip gate / gate + trace accounting)
against the 8 bare blocks, all running every block.

Eval mode, no grad, NCHW, random init (weights do not change the time).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dyve import data, models
from dyve._io import write_json
from dyve.dynamic import runtime
from dyve.dynamic.trace import Trace
from dyve.dynamic.unit import RunState, Unit
from dyve.eval.latency import Timing, interleaved, machine, num_threads
from dyve.mechanisms.block_skip import ActivationGate

RATES = (0.0, 0.25, 0.5, 0.75)
METHODS = ("dense", "masked", "gather_scatter", "grouped")


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def stage_input(net: nn.Module, stage: str, n: int) -> tuple[torch.Tensor, list[nn.Module]]:
    """The input of the stage's non-downsampling blocks for ``n`` sample images, and them."""
    imgs = data.load_sample().images[:n]
    x = models.model_info(net).norm.apply(torch.from_numpy(imgs))
    x = net.relu(net.bn1(net.conv1(x)))
    for name in ("layer1", "layer2", "layer3"):
        seq = getattr(net, name)
        if name == stage:
            blocks = list(seq)
            return blocks[0](x), blocks[1:]
        x = seq(x)
    raise SystemExit(f"unknown stage {stage!r}")


def make_masks(n: int, b: int, rate: float, k: int, gen: torch.Generator) -> torch.Tensor:
    """Bool ``[n, b]`` (True = run) with exactly ``round(rate * n * b)`` skips.

    ``k == 0``: skips placed independently; ``k > 0``: each sample takes one of ``k``
    patterns, each with ``round(rate * b)`` skipped blocks.
    """
    if k == 0:
        flat = torch.ones(n * b, dtype=torch.bool)
        flat[torch.randperm(n * b, generator=gen)[: round(rate * n * b)]] = False
        return flat.view(n, b)
    pats = torch.ones(k, b, dtype=torch.bool)
    for i in range(k):
        pats[i, torch.randperm(b, generator=gen)[: round(rate * b)]] = False
    assign = torch.arange(n) % k
    return pats[assign[torch.randperm(n, generator=gen)]]


def methods(blocks: list[nn.Module]) -> dict[str, Callable[[torch.Tensor, torch.Tensor], Any]]:
    """Each execution strategy as ``fn(x, mask)`` over the stage."""

    def dense(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        for blk in blocks:
            x = blk(x)
        return x

    def masked(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        for j, blk in enumerate(blocks):
            x = runtime.masked(x, m[:, j], blk, identity)
        return x

    def gather_scatter(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        for j, blk in enumerate(blocks):
            x = runtime.gather_scatter(x, m[:, j], blk, identity)
        return x

    def pattern_fn(xg: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
        for j in pattern.nonzero().flatten().tolist():
            xg = blocks[j](xg)
        return xg

    def grouped(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return runtime.run_grouped(x, m, pattern_fn)

    return {"dense": dense, "masked": masked, "gather_scatter": gather_scatter, "grouped": grouped}


def check_outputs(fns: dict[str, Any], x: torch.Tensor, m: torch.Tensor) -> None:
    """The three compaction strategies must agree (they compute the same thing)."""
    ref = fns["masked"](x, m)
    scale = float(ref.abs().max()) or 1.0  # random init: activations grow to ~1e3
    for name in ("gather_scatter", "grouped"):
        if float((fns[name](x, m) - ref).abs().max()) > 1e-5 * scale:
            raise SystemExit(f"{name} disagrees with masked: a runtime bug, not a timing issue")


def row(mask_kind: str, rate: float, m: torch.Tensor, t: dict[str, Timing]) -> dict[str, Any]:
    frac = float(m.float().mean())
    dense = t["dense"].median_ms
    return {
        "masks": mask_kind,
        "skip_rate": rate,
        "executed_fraction": round(frac, 4),
        "distinct_patterns": len(runtime.group_by_pattern(m)),
        **{f"{k}_ms": v.as_dict() for k, v in t.items()},
        "ideal_ms": round(dense * frac, 4),
        "speedup": {k: round(dense / t[k].median_ms, 3) for k in METHODS if k != "dense"}
        | {"ideal": round(1 / frac, 3) if frac else None},
    }


def time_b64(blocks: list[nn.Module], x: torch.Tensor, args: argparse.Namespace) -> list[dict]:
    fns = methods(blocks)
    gen = torch.Generator().manual_seed(args.seed)
    rows = []
    with num_threads(args.threads):
        for kind, k in (("iid", 0), (f"k{args.patterns}", args.patterns)):
            for rate in RATES:
                m = make_masks(len(x), len(blocks), rate, k, gen)
                check_outputs(fns, x, m)
                t = interleaved(
                    {name: (lambda f=f, m=m: f(x, m)) for name, f in fns.items()},
                    repeats=args.repeats,
                )
                rows.append(row(kind, rate, m, t))
    return rows


def time_b1(blocks: list[nn.Module], x: torch.Tensor, args: argparse.Namespace) -> list[dict]:
    fns = methods(blocks)
    gen = torch.Generator().manual_seed(args.seed + 1)
    rows = []
    n = len(x)
    with num_threads(1):
        for rate in RATES:
            m = make_masks(n, len(blocks), rate, 0, gen)

            def cycling(f: Callable[..., Any], m: torch.Tensor = m) -> Callable[[], Any]:
                state = {"i": 0}

                def call() -> Any:
                    i = state["i"] % n
                    state["i"] += 1
                    return f(x[i : i + 1], m[i : i + 1])

                return call

            t = interleaved({k: cycling(f) for k, f in fns.items()}, repeats=args.repeats_b1)
            rows.append(row("iid", rate, m, t))
    return rows


def gate_overhead(blocks: list[nn.Module], x: torch.Tensor, repeats: int) -> dict[str, Any]:
    """Bare blocks against Unit-wrapped blocks (every block runs) at batch 1, one thread."""
    x1 = x[:1]

    def units(gate: bool, traced: bool) -> nn.Sequential:
        st = RunState(backend="fast")
        if traced:
            st.trace, st.rows = Trace.new(1, "executed"), torch.arange(1)
        us = []
        for j, blk in enumerate(blocks):
            u = Unit(f"b{j}", blk, st, macs=1)
            if gate:  # a tiny threshold: the gate computes its statistic and says "run"
                u.add_gate("block_skip", ActivationGate(1e-9, forced_off=False))
            us.append(u)
        return nn.Sequential(*us)

    variants = {
        "bare": nn.Sequential(*blocks),
        "unit_no_gate": units(False, False),
        "unit_gate": units(True, False),
        "unit_gate_trace": units(True, True),
    }
    with num_threads(1):
        t = interleaved({k: (lambda v=v: v(x1)) for k, v in variants.items()}, repeats=repeats)
    bare = t["bare"].median_ms
    per_unit_us = {
        k: round((t[k].median_ms - bare) * 1e3 / len(blocks), 2) for k in variants if k != "bare"
    }
    return {
        "blocks": len(blocks),
        **{f"{k}_ms": v.as_dict() for k, v in t.items()},
        "overhead_per_unit_us": per_unit_us,
        "block_us": round(bare * 1e3 / len(blocks), 2),
    }


def print_rows(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    print(
        f"{'masks':<6} {'skip':>5} {'exec':>5} {'pats':>4} {'dense':>8} {'masked':>14} "
        f"{'gather/scatter':>16} {'grouped':>14} {'ideal':>14}"
    )
    for r in rows:
        sp = r["speedup"]
        cell = {
            k: f"{r[f'{k}_ms']['median_ms']:.3f} ({sp[k]:.2f}x)"
            for k in ("masked", "gather_scatter", "grouped")
        }
        ideal = f"{r['ideal_ms']:.3f} ({sp['ideal']:.2f}x)" if sp["ideal"] else "-"
        print(
            f"{r['masks']:<6} {r['skip_rate']:>5.0%} {r['executed_fraction']:>5.2f} "
            f"{r['distinct_patterns']:>4} {r['dense_ms']['median_ms']:>8.3f} "
            f"{cell['masked']:>14} {cell['gather_scatter']:>16} {cell['grouped']:>14} {ideal:>14}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="resnet56_cifar")
    ap.add_argument("--stage", default="layer2", choices=("layer1", "layer2", "layer3"))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="threads of the large batch")
    ap.add_argument("--patterns", type=int, default=4, help="K of the k<K> masks")
    ap.add_argument("--repeats", type=int, default=30, help="timed repeats at the large batch")
    ap.add_argument(
        "--repeats-b1", type=int, default=128, help="timed batch-1 calls (a multiple of --batch)"
    )
    ap.add_argument("--repeats-gate", type=int, default=200, help="timed repeats of the gate test")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    net = models.create(args.model).eval()
    with torch.no_grad():
        x, blocks = stage_input(net, args.stage, args.batch)
        b64 = time_b64(blocks, x, args)
        b1 = time_b1(blocks, x, args)
        gate = gate_overhead(blocks, x, args.repeats_gate)
    where = f"{args.stage}.1-{len(blocks)} of {args.model}, input {tuple(x.shape[1:])}"
    print_rows(
        f"batch {args.batch}, {args.threads} threads, {where}: median ms of {args.repeats} "
        "(speedup vs dense)",
        b64,
    )
    print_rows(
        f"batch 1, 1 thread, {where}: median ms of {args.repeats_b1} (one image per call)", b1
    )
    print(
        f"\nper-unit overhead at batch 1 (1 thread, {gate['blocks']} blocks of "
        f"{gate['block_us']} us each, median of {args.repeats_gate}): "
        + ", ".join(f"{k} {v} us" for k, v in gate["overhead_per_unit_us"].items())
    )
    result = {
        "machine": machine(),
        "model": args.model,
        "stage": args.stage,
        "blocks": len(blocks),
        "stage_input": list(x.shape[1:]),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        f"b{args.batch}": b64,
        "b1": b1,
        "gate_overhead_b1": gate,
    }
    print(json.dumps(result["machine"]))
    if args.out:
        write_json(args.out, result)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
