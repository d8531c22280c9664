"""Top-1 of the distillation teachers `dyve lcnet train --teacher ... --teacher-flip` can
use: each shipped CIFAR-10 network alone, and every set with the backbone in it, with and
without mirror images (soft targets averaged at the training temperature, argmax taken).
Run on the select split (test-a), so a teacher is chosen without looking at the report
split.

    python benchmarks/teachers.py [--split test-a] [--temperature 4]
"""

import argparse
import itertools

import torch

from dyve import data
from dyve.models import create, model_info, shipped_models
from dyve.train.distill import Teacher

ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("--data", default="cifar10-jpeg")
ap.add_argument("--split", default="test-a")
ap.add_argument("--backbone", default="resnet56_cifar")
ap.add_argument("--temperature", type=float, default=4.0)
args = ap.parse_args()

images = data.load_images(args.data, args.split)
norm = model_info(create(args.backbone)).norm
x = norm.apply(torch.from_numpy(images.images.copy()))
y = torch.as_tensor(images.labels, dtype=torch.long)
nets = {n: create(n, pretrained=True).eval() for n in shipped_models()}
others = [n for n in nets if n != args.backbone and model_info(nets[n]).norm == norm]
print(f"{args.data} {args.split} ({len(y)} images), T = {args.temperature}")
print("| teacher | mirrors | top-1 (%) |\n| --- | --- | ---: |")
for k in range(len(others) + 1):
    for extra in itertools.combinations(others, k):
        names = (args.backbone, *extra)
        for flip in (False, True):
            teacher = Teacher([nets[n] for n in names], args.temperature, flip)
            p = torch.cat([teacher(x[i : i + 1000]) for i in range(0, len(x), 1000)])
            top1 = 100 * (p.argmax(1) == y).float().mean().item()
            print(f"| {' + '.join(names)} | {'yes' if flip else 'no'} | {top1:.2f} |")
