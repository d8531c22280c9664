"""Training-step time of a zoo model in NCHW and channels-last, interleaved (why `dyve train`
uses channels-last on a CPU).

    python benchmarks/train_step.py [--model resnet56_cifar] [--batch 128] [--repeats 5]
"""

import argparse

import torch
import torch.nn.functional as F

from dyve import models
from dyve.eval.latency import interleaved, machine

ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("--model", default="resnet56_cifar")
ap.add_argument("--batch", type=int, default=128)
ap.add_argument("--repeats", type=int, default=5)
args = ap.parse_args()

x = torch.randn(args.batch, 3, 32, 32)
y = torch.randint(0, 10, (args.batch,))
steps = {}
for name, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
    net = models.create(args.model).train().to(memory_format=fmt)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    xf = x.contiguous(memory_format=fmt)

    def step(net=net, opt=opt, xf=xf) -> None:
        loss = F.cross_entropy(net(xf), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    steps[name] = step
t = interleaved(steps, repeats=args.repeats, warmup=2)
for name, timing in t.items():
    print(
        f"{args.model} batch {args.batch} {name:<14} {timing.median_ms / 1e3:.3f} s/step (median)"
    )
print(machine())
