"""Probe (sessions 34 and 39): average the weights of LC-Net runs on one trajectory (a run
and its continuation by ``--init``), re-estimate the batch norms on the train split, and
score the average on the selection split (test-a, simulated cost, as the runs' epochs).

Stochastic weight averaging gains on plain networks where the averaged points lie in one
basin; here the gates are averaged too, so the decisions, and with them the cost, move.
Not a `dyve` option: it did not gain (NOTES, session 39).

    python benchmarks/lcnet_average.py RUN RUN [...] [--weights 0.5,0.5] [--threads 2]
"""

from __future__ import annotations

import argparse

import torch

from dyve import data
from dyve.dynamic import DynamicNet, load
from dyve.eval.measure import measure
from dyve.models import model_info


def score(net: DynamicNet, split: data.ImageSet, tag: str) -> None:
    m = measure(net.eval(), split, model_info(net.backbone).norm)
    print(f"{tag}: top-1 {m.top1:.2f} % at {net.static_macs / m.macs_mean:.3f}x fewer MACs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--weights", help="comma-separated, one per run (default: equal)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n = len(args.runs)
    weights = [float(w) for w in args.weights.split(",")] if args.weights else [1 / n] * n
    nets = [load(r) for r in args.runs]
    states = [net.state_dict() for net in nets]
    net = nets[0]
    net.load_state_dict(
        {
            k: sum(w * s[k] for w, s in zip(weights, states, strict=True))
            if v.is_floating_point()
            else v
            for k, v in states[0].items()
        }
    )
    test = data.load("cifar10-jpeg", "test-a")
    score(net, test, "averaged, batch norms averaged")
    # the batch norms' statistics of the averaged network: a cumulative mean over the
    # train split (crop/flip, as in training), the gates acting as in training
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    train = data.load_images("cifar10-jpeg", "train")
    net.train()
    with torch.no_grad():
        for x, _ in data.batches(train, 256, model_info(net.backbone).norm, augment=True):
            net(x)
    score(net, test, "averaged, batch norms re-estimated")


if __name__ == "__main__":
    main()
