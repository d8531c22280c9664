"""A/B of the native kernels: a git revision's build against the working tree's, one process.

This machine's speed drifts by 10-30 % between runs, more than most kernel changes gain,
so two runs of a benchmark cannot tell a kernel change from drift. Here both builds are
loaded into one process, each target is lowered once per build (the same network, knobs
and inputs), the outputs are checked equal, and the two programs are timed interleaved
at batch 1 on one thread: the ratio is the change's own.

    python benchmarks/kernel_ab.py --base HEAD~1 resnet56_cifar
    python benchmarks/kernel_ab.py --base 20ddbc4 src/dyve/_assets/runs/lcnet_resnet56
    python benchmarks/kernel_ab.py --base HEAD~2 time:resnet56_cifar   # a DyVEDeep point
    python benchmarks/kernel_ab.py --base-arch x86-64-v3 resnet56_cifar  # AVX2 vs this CPU

A target is a zoo model name (its dense program), a run directory of a dynamic network
that lowers to a program (DyVEDeep, LC-Net, ConvNet-AIG), or ``ops:NAME`` / ``time:NAME``
for a committed DyVEDeep point (see ``benchmarks/dyvedeep_speed.py``).
"""

from __future__ import annotations

import argparse
import ctypes
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from dyve.dynamic import load
from dyve.eval.latency import cycling, interleaved, machine, num_threads
from dyve.mechanisms.dyvedeep import native
from dyve.mechanisms.dyvedeep.program import dense_program
from dyve.models import create

sys.path.insert(0, str(Path(__file__).parent))
from dyvedeep_speed import POINTS, build

ROOT = Path(__file__).resolve().parents[1]
PKG = "src/dyve/mechanisms/dyvedeep"


def _show(rev: str, path: str) -> str:
    return subprocess.run(
        ["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout


def base_build(rev: str, out: Path, arch: str) -> ctypes.CDLL:
    """The kernels as they were at git revision ``rev`` (its own list of sources), built
    into ``out`` for ``-march=arch``."""
    listed = re.search(r"^SOURCES = \(([^)]*)\)", _show(rev, f"{PKG}/native.py"), re.M)
    if listed is None:
        raise SystemExit(f"{rev}: no SOURCES in {PKG}/native.py")
    parts = [_show(rev, f"{PKG}/{name}") for name in re.findall(r'"([^"]+)"', listed.group(1))]
    cxx = native._compiler()
    if cxx is None:
        raise SystemExit("no C++ compiler found")
    err = native._build(cxx, "\n".join(parts), out, archs=([f"-march={arch}"],))
    if err is not None:
        raise SystemExit(f"building {rev}: {err}")
    dll = native.bind(out)
    if isinstance(dll, str):
        raise SystemExit(f"{rev}: {dll}")
    return dll


def lowered(target: str, dll: ctypes.CDLL, x: torch.Tensor) -> Any:
    """``target``'s program, built while ``dll`` stands in for the kernels."""
    own = native.kernels
    native.kernels = lambda: dll  # type: ignore[assignment]
    try:
        if ":" in target:
            point, name = target.split(":", 1)
            if point not in POINTS:
                raise SystemExit(f"unknown point {point!r}; choose from {sorted(POINTS)}")
            net = build(name, point)
        elif Path(target).is_dir():
            net = load(target)
        else:
            return dense_program(create(target, pretrained=True).eval(), x)
        net.backend = "fast"
        net.eval()
        return net.mechanisms[0].lower(net, x)
    finally:
        native.kernels = own


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("targets", nargs="+", help="zoo model, run directory, or ops:/time:NAME")
    p.add_argument("--base", default="HEAD", help="git revision of the A build (default HEAD)")
    p.add_argument("--repeats", type=int, default=200, help="timed calls of each, per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--base-arch",
        default="native",
        help="-march of the A build, e.g. x86-64-v3 (AVX2) or x86-64 (SSE2): the other paths",
    )
    p.add_argument("--shape", type=int, nargs=3, default=(3, 32, 32), help="input C H W")
    args = p.parse_args()
    new = native.kernels()
    if new is None:
        raise SystemExit("the working tree's kernels are unavailable")
    with tempfile.TemporaryDirectory() as tmp:
        old = base_build(args.base, Path(tmp) / "base.so", args.base_arch)
        print(
            f"machine: {machine()['cpu']}; A = {args.base} (-march={args.base_arch}), "
            "B = working tree (as dyve builds it); batch 1, 1 thread"
        )
        torch.manual_seed(0)
        for target in args.targets:
            xs = [torch.randn(1, *args.shape) for _ in range(8)]
            progs = {"A": lowered(target, old, xs[0]), "B": lowered(target, new, xs[0])}
            if any(v is None for v in progs.values()):
                raise SystemExit(f"{target} does not lower to a program")
            with torch.no_grad(), num_threads(1):
                diff = max((progs["A"](x) - progs["B"](x)).abs().max().item() for x in xs)
                for _ in range(args.rounds):
                    t = interleaved(
                        {k: cycling(v, xs) for k, v in progs.items()},
                        repeats=args.repeats,
                        cycle=len(xs),
                    )
                    a, b = t["A"].mean_ms, t["B"].mean_ms
                    print(f"{target}: A {a:.3f} ms, B {b:.3f} ms, A/B {a / b:.3f}x")
            print(f"{target}: largest output difference {diff:.3g}")


if __name__ == "__main__":
    main()
