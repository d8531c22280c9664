"""Paired comparison of LC-Net runs with a static network on the runs' report split: the
images one gets right and the other wrong, the difference in top-1 and its two-sided 95 %
interval (`dyve.eval.paired`). The page (docs/results/lcnet.md) sets each same-recipe
control against its runs unpaired; this says whether the difference is more than the
split's noise.

    python benchmarks/paired_control.py RUN_DIR... --model resnet20_cifar --weights FILE
"""

import argparse
from pathlib import Path

import torch

import dyve.dynamic
from dyve import data
from dyve._io import read_json
from dyve.eval.evaluate import evaluate
from dyve.eval.measure import measure
from dyve.eval.paired import PairedLoss
from dyve.models import create, model_info

ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
ap.add_argument("--model", default="resnet20_cifar")
ap.add_argument("--weights", required=True, help="the static network's weights file")
args = ap.parse_args()

static = create(args.model, pretrained=args.weights).eval()
norm = model_info(static).norm
print(f"static {args.model} from {args.weights}")
print("| run | split | run top-1 | static top-1 | run wrong, static right | run right, "
      "static wrong | run - static (pp) | 95 % interval (pp) |")  # fmt: skip
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
for run in args.runs:
    m = read_json(run / "metrics.json")
    cfg = read_json(run / "config.json")["config"]
    ds = data.load_images(cfg["data"], m["split"])
    net = dyve.dynamic.load(run)
    with torch.no_grad():
        got = measure(net, ds, norm)  # the emulated back-end: the same outputs as the fast one
        ref = evaluate(static, ds, norm)
    if abs(got.top1 - m["top1"]) > 1e-6:
        raise SystemExit(f"{run}: top-1 {got.top1} here, {m['top1']} in its metrics.json")
    p = PairedLoss.of(ref.predictions == ds.labels, got.predictions == ds.labels)
    half = p.margin_pp(0.975)
    print(
        f"| {run.name} | {m['split']} | {got.top1:.2f} | {ref.top1:.2f} | {p.worse} | "
        f"{p.better} | {-p.loss_pp:+.2f} | {-p.loss_pp - half:+.2f} to {-p.loss_pp + half:+.2f} |"
    )
