"""``dyve d2nn train`` (one D2NN graph, one routing, one lambda) and ``dyve d2nn results``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dyve.cli.trainer_args import add_bf16, add_results, add_run_options, config_from


def add(sub: Any) -> None:
    """Register ``d2nn`` on the ``add_subparsers`` object."""
    from dyve.mechanisms.d2nn.archs import ARCHS
    from dyve.mechanisms.d2nn.train import ROUTES, D2NNTrainConfig

    d = D2NNTrainConfig()
    p = sub.add_parser("d2nn", help="D2NN: graphs of modules with Q-learned controllers")
    psub = p.add_subparsers(dest="d2nn_cmd", required=True)
    t = psub.add_parser(
        "train",
        help="train a D2NN graph (backprop + Q-learning), then measure it on val and test",
    )
    t.add_argument("--out", required=True, type=Path, help="run directory")
    t.add_argument("--arch", choices=ARCHS, default=d.arch)
    t.add_argument(
        "--route",
        choices=ROUTES,
        default=d.route,
        help="learned: epsilon-greedy Q-learning; random: random decisions, or all: every "
        "node runs (pre-training, static-graph baseline); static: one static path alone",
    )
    t.add_argument("--lam", type=float, default=d.lam, help="cost weight of the reward")
    t.add_argument("--data", default=d.data)
    t.add_argument("--epochs", type=int, default=d.epochs)
    t.add_argument("--batch-size", type=int, default=d.batch_size)
    t.add_argument("--lr", type=float, default=d.lr, help="learning rate (cosine)")
    t.add_argument("--weight-decay", type=float, default=d.weight_decay)
    t.add_argument("--q-lr-scale", type=float, default=d.q_lr_scale, help="controllers' lr factor")
    t.add_argument("--q-weight", type=float, default=d.q_weight, help="weight of the Q loss")
    t.add_argument("--eps-start", type=float, default=d.eps_start)
    t.add_argument("--eps-end", type=float, default=d.eps_end)
    t.add_argument("--eps-decay", type=float, default=d.eps_decay, help="share of training")
    t.add_argument("--positive", type=int, default=d.positive, help="cascade: the class vs rest")
    t.add_argument("--bag", type=int, default=d.bag, help="cascade: mini-bag size for F1")
    t.add_argument("--init", default=None, help="start from this run directory's weights")
    t.add_argument(
        "--freeze",
        action="store_true",
        help="route learned from --init: train the controllers only (regular nodes frozen; "
        "cheap epochs: use more of them and --q-lr-scale 1)",
    )
    t.add_argument("--static", default=None, help='route static: the path to train ("q=low")')
    t.add_argument("--seed", type=int, default=d.seed)
    add_bf16(t)
    add_run_options(t)
    t.set_defaults(func=cmd_train)

    add_results(psub, "docs/results/d2nn.md", "dyve.mechanisms.d2nn.results")


def config(args: argparse.Namespace) -> Any:
    """The :class:`D2NNTrainConfig` the command line describes."""
    from dyve.mechanisms.d2nn.train import D2NNTrainConfig

    return config_from(args, D2NNTrainConfig)


def cmd_train(args: argparse.Namespace) -> int:
    """Train, measure once; print the headline metrics."""
    import json

    from dyve.mechanisms.d2nn.train import train

    metrics = train(
        config(args),
        args.out,
        resume=args.resume,
        threads=args.threads,
        device=args.device,
        progress=not args.no_progress,
    )
    if metrics:  # empty on the other processes of a torchrun job
        keys = (metrics["metric"], "top1", "macs_per_sample", "cost_reduction", "split")
        print(json.dumps({k: metrics[k] for k in dict.fromkeys(keys)}, indent=1))
        print(f"wrote {args.out / 'metrics.json'}")
    return 0
