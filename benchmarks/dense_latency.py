"""Dense batch-1 latency and batch-64 throughput of every zoo model, interleaved in one run.

The reference numbers that dynamic methods are compared with. Run:

    python benchmarks/dense_latency.py [--repeats 30] [--out benchmarks/results/dense_latency.json]

Batch 1 uses one thread (two are erratic at batch 1 on this class of machine), batch 64
all threads. Eval mode, no grad, eager, contiguous (NCHW) memory format; shipped weights
where they exist, random initialisation otherwise.
"""

import argparse
import json
from pathlib import Path

from dyve import models
from dyve._io import write_json
from dyve.cost import static_cost
from dyve.eval.latency import machine, model_latency

ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("--repeats", type=int, default=30)
ap.add_argument("--models", default=",".join(models.list_models()))
ap.add_argument("--out", type=Path, default=None)
args = ap.parse_args()

names = args.models.split(",")
# shipped weights where they exist: random deep ResNets overflow, and inf/NaN arithmetic
# is not representative
shipped = set(models.shipped_models())
nets = {n: models.create(n, pretrained=n in shipped) for n in names}
b1 = model_latency(nets, (3, 32, 32), repeats=args.repeats, batch=1, threads=1)
b64 = model_latency(nets, (3, 32, 32), repeats=max(3, args.repeats // 3), batch=64, threads=None)
rows = []
print(f"{'model':<22} {'MACs/sample':>12} {'b=1 ms (1 thr)':>15} {'b=64 img/s':>11}")
for n in names:
    macs = static_cost(nets[n]).total_macs
    ips = 64 / (b64[n].median_ms / 1e3)
    rows.append({"model": n, "macs": macs, "b1_ms": b1[n].as_dict(), "b64_images_per_s": ips})
    print(f"{n:<22} {macs / 1e6:>10.1f} M {b1[n].median_ms:>15.2f} {ips:>11.0f}")
result = {"machine": machine(), "repeats": args.repeats, "rows": rows}
print(json.dumps(result["machine"]))
if args.out:
    write_json(args.out, result)
