"""Why SPET's check pass cannot share loads across filters: the union of check terms.

For each SPET site of a calibrated zoo model (docs/results/dyvedeep/<model>), the share of
the site's terms that a tile of T filters (T = 1, 2, 4, 8) would have to load for their
check passes: each filter checks its own largest-|w| terms (``checkpoint`` of them), so a
register tile over filters, like the dense kernel's 8 filters, must visit the union.

    python benchmarks/spet_check_union.py resnet56_cifar
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dyvedeep_speed import MODELS, build

from dyve.dynamic.site import SiteUnit

TILES = (1, 2, 4, 8)


def unions(name: str) -> dict[int, list[float]]:
    """Per tile size, the union share of each SPET site (mean over its tiles)."""
    net = build(name).eval()
    out: dict[int, list[float]] = {t: [] for t in TILES}
    for m in net.modules():
        if not (isinstance(m, SiteUnit) and m.op is not None and m.op.knobs.spet is not None):
            continue
        idx = m.op.plan(m).top_idx.long()
        cout, terms = idx.shape[0], m.module.weight[0].numel()
        for t in TILES:
            share = [len(set(idx[o : o + t].flatten().tolist())) / terms for o in range(0, cout, t)]
            out[t].append(statistics.fmean(share))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=list(MODELS))
    for name in p.parse_args().models:
        u = unions(name)
        cells = ", ".join(f"{t} filters {statistics.fmean(v):.2f}" for t, v in u.items() if v)
        print(f"{name}: {len(u[1])} SPET sites; share of terms a tile checks: {cells}")


if __name__ == "__main__":
    main()
