"""Training-step time of a zoo model, interleaved: NCHW, channels-last (why `dyve train`
uses channels-last on a CPU) and channels-last under bfloat16 autocast (`--bf16` of
`dyve train` and `dyve lcnet train`; fast where the CPU has AMX). With ``--lcnet`` the
model carries LC-Net's gates as `dyve lcnet train` builds it (scales on, nothing skipped).
With ``--d2nn ARCH`` it is a D2NN graph as `dyve d2nn train` builds it, every node run
(route `all`: the loss summed over the heads), the most a routed step computes.

    python benchmarks/train_step.py [--model resnet56_cifar] [--batch 128] [--repeats 5]
    python benchmarks/train_step.py --lcnet --threads 2
    python benchmarks/train_step.py --d2nn highlow --threads 2
"""

import argparse

import torch
import torch.nn.functional as F

from dyve import models
from dyve.eval.latency import interleaved, machine
from dyve.mechanisms.d2nn import train as d2nn_train
from dyve.mechanisms.lcnet.train import GateTrainConfig, build

ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("--model", default="resnet56_cifar")
ap.add_argument("--batch", type=int, default=128)
ap.add_argument("--repeats", type=int, default=5)
ap.add_argument("--threads", type=int, default=None)
ap.add_argument("--lcnet", action="store_true", help="with LC-Net's gates (its training build)")
ap.add_argument("--d2nn", choices=d2nn_train.ARCHS, help="a D2NN graph instead, every node run")
args = ap.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)

x = torch.randn(args.batch, 3, 32, 32)
y = torch.randint(0, 10, (args.batch,))
VARIANTS = (
    ("nchw", torch.contiguous_format, False),
    ("channels_last", torch.channels_last, False),
    ("channels_last+bf16", torch.channels_last, True),
)
steps = {}
for name, fmt, bf16 in VARIANTS:
    if args.d2nn:
        net = d2nn_train.build(d2nn_train.D2NNTrainConfig(arch=args.d2nn)).train()
        net = net.to(memory_format=fmt)
    elif args.lcnet:
        net = build(GateTrainConfig(model=args.model)).train().to(memory_format=fmt)
    else:
        net = models.create(args.model).train().to(memory_format=fmt)
    opt = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    xf = x.contiguous(memory_format=fmt)

    def step(net=net, opt=opt, xf=xf, bf16=bf16) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if args.d2nn:
                loss = sum(F.cross_entropy(h, y % h.shape[1]) for h in net.run_all(xf)[1])
            else:
                loss = F.cross_entropy(net(xf), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    steps[name] = step
t = interleaved(steps, repeats=args.repeats, warmup=2)
what = f"d2nn {args.d2nn}" if args.d2nn else args.model + (" + LC-Net gates" * args.lcnet)
what += f" batch {args.batch}"
for name, timing in t.items():
    print(f"{what} {name:<18} {timing.median_ms / 1e3:.3f} s/step (median)")
ratio = t["channels_last"].median_ms / t["channels_last+bf16"].median_ms
print(f"bf16 speedup over float32 (channels_last, same run): {ratio:.2f}x")
print(machine())
