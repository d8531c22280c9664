"""Where an LC-Net run's L-Net gates sit: per block, the pre-activation z of ReLU1 over
images of the select split (the block is skipped where z <= 0), how much it varies
between images, and the margin |mean| / std; then the scale of the residual stream that
the gates read (the stem's batch-norm scale and shift) and of the classifier's weights,
against the shipped backbone's.

A gate whose z stays many standard deviations from 0 decides the same for every image.
Session 33 used it to see why L-Net's decisions are input-independent (NOTES).

    python benchmarks/lcnet_gates.py RUN [--images 1000] [--split test-a]
"""

import argparse
from collections import defaultdict

import torch

from dyve import data
from dyve.dynamic import load
from dyve.dynamic.unit import Unit
from dyve.eval.measure import measure
from dyve.mechanisms.lcnet.gates import LCGate
from dyve.models import create, model_info

ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("run")
ap.add_argument("--data", default="cifar10-jpeg")
ap.add_argument("--split", default="test-a")
ap.add_argument("--images", type=int, default=1000)
args = ap.parse_args()

torch.set_num_threads(1)
net = load(args.run).eval()
z: dict[str, list[torch.Tensor]] = defaultdict(list)
for name, unit in net.backbone.named_modules():
    gate = unit.gates["lcnet"] if isinstance(unit, Unit) and "lcnet" in unit.gates else None
    if isinstance(gate, LCGate) and gate.layer:
        # the gate reads the block's input: L-Net's pre-activation of it, pooled (per-block
        # or global predictor alike)
        def hook(_m, inp, gate=gate, name=name):  # type: ignore[no-untyped-def]
            z[name].append(gate._pre(inp[0].mean((2, 3)))[0][:, 0])

        unit.register_forward_pre_hook(hook)
ds = data.load(args.data, args.split).subset(slice(0, args.images))
norm = model_info(net.backbone).norm
measure(net, ds, norm)  # the shared pass over the images; the hooks collect z
print(f"{args.run}: L-Net pre-activation z over {len(ds)} images of {args.split}")
print("| block | mean z | std | min | max | images open (%) | abs(mean) / std |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for name, parts in z.items():
    v = torch.cat(parts)
    mean, std = v.mean().item(), v.std().item()
    print(
        f"| {name} | {mean:.3f} | {std:.4f} | {v.min().item():.3f} | {v.max().item():.3f} | "
        f"{100 * (v > 0).float().mean().item():.1f} | {abs(mean) / max(std, 1e-12):.1f} |"
    )
shipped = create(str(net.backbone_id), pretrained=True).state_dict()
mine = {k.removeprefix("backbone."): v for k, v in net.state_dict().items()}
head = [k for k, v in shipped.items() if k.endswith("weight") and v.ndim == 2][-1]
# the stem's batch norm, whose output is the stream, and the classifier that reads it
for key in ("bn1.weight", "bn1.bias", head):
    print(
        f"{key}: mean |.| {mine[key].abs().mean().item():.3f} "
        f"(shipped {shipped[key].abs().mean().item():.3f})"
    )
