"""Cost of DyVEDeep's emulation against the dense network, interleaved in one run.

The emulation is a simulation (it computes densely, then counts what a skipping
implementation would do); its speed bounds how many points calibration can verify. Run:

    python benchmarks/dyvedeep_emulation.py [--model resnet56_cifar] [--batch 256]

Every knob on at moderate global thresholds, shipped weights, real CIFAR-10 test images
when prepared (random images otherwise), all threads, median of repeats.
"""

import argparse
import json

import torch

from dyve import models
from dyve.dynamic import equip
from dyve.errors import DyveError
from dyve.eval.latency import interleaved, machine
from dyve.mechanisms import DyVEDeep

ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("--model", default="resnet56_cifar")
ap.add_argument("--batch", type=int, default=256)
ap.add_argument("--repeats", type=int, default=5)
args = ap.parse_args()

backbone = models.create(args.model, pretrained=True).eval()
info = models.model_info(backbone)
try:
    from dyve.data import batches, load_images

    x, _ = next(
        batches(load_images("cifar10-jpeg", "test", limit=args.batch), args.batch, info.norm)
    )
except DyveError:  # data not prepared: random images measure the same work
    x = torch.randn(args.batch, *info.input_size)
net = equip(backbone, DyVEDeep(spet=0.0, spet_exact=True, sdss=0.05, sfma=0.01), backend="emulated")
with torch.no_grad():
    t = interleaved(
        {"dense": lambda: backbone(x), "emulated": lambda: net(x)}, repeats=args.repeats
    )
result = {
    "model": args.model,
    "batch": args.batch,
    "dense_ms": t["dense"].median_ms,
    "emulated_ms": t["emulated"].median_ms,
    "emulated_over_dense": t["emulated"].median_ms / t["dense"].median_ms,
    "machine": machine(),
}
print(json.dumps(result, indent=1))
