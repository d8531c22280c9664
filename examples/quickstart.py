"""Quickstart: a shipped model, its cost table, its accuracy on the embedded sample, its latency.

Run: python examples/quickstart.py   (no data download, about 10 seconds on a laptop CPU)
"""

import dyve
from dyve.eval.evaluate import evaluate
from dyve.eval.latency import model_latency

net = dyve.models.create("resnet20_cifar", pretrained=True)  # fine-tuned on CIFAR-10 JPEG
info = dyve.models.model_info(net)

table = dyve.cost.static_cost(net)  # per-layer MACs, counted eagerly
print(f"{info.name}: {table.total_macs / 1e6:.1f} M MACs per image ({dyve.cost.CONVENTION})")

sample = dyve.data.load_sample()  # 1,000 CIFAR-10 test images shipped in the package
acc = evaluate(net, sample, info.norm)
print(f"top-1 on the {acc.n}-image sample: {acc.top1:.1f} %  (top-5 {acc.top5:.1f} %)")

lat = model_latency({"resnet20": net}, info.input_size, repeats=10, batch=1, threads=1)
print(f"batch-1 latency, 1 thread: {lat['resnet20'].median_ms:.2f} ms (median of 10)")
