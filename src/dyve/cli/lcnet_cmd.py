"""``dyve lcnet train`` (LC-Net, or the ConvNet-AIG or SkipNet-style baseline) and ``dyve
lcnet results``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dyve.cli.trainer_args import (
    add_bf16,
    add_distill,
    add_results,
    add_run_options,
    config_from,
)


def add(sub: Any) -> None:
    """Register ``lcnet`` on the ``add_subparsers`` object."""
    from dyve.mechanisms.lcnet.train import METHODS, GateTrainConfig

    d = GateTrainConfig()
    p = sub.add_parser("lcnet", help="LC-Net: learned layer and channel skipping (and AIG)")
    psub = p.add_subparsers(dest="lcnet_cmd", required=True)
    t = psub.add_parser(
        "train",
        help="fine-tune a backbone with LC-Net predictors (or AIG gates); keep the best "
        "checkpoint on the select split, report once on the report split",
    )
    t.add_argument("--out", required=True, type=Path, help="run directory")
    t.add_argument("--model", default=d.model, help=f"zoo model (default: {d.model})")
    t.add_argument("--method", choices=METHODS, default=d.method)
    t.add_argument("--data", default=d.data)
    t.add_argument("--no-layer", action="store_true", help="LC-Net without L-Net (C-Net only)")
    t.add_argument("--no-channel", action="store_true", help="LC-Net without C-Net (L-Net only)")
    t.add_argument("--predictor", choices=("block", "global"), default=d.predictor)
    t.add_argument("--lam-l", type=float, default=d.lam_l, help="L-Net sparsity weight")
    t.add_argument("--lam-c", type=float, default=d.lam_c, help="C-Net sparsity weight")
    t.add_argument(
        "--weighting",
        choices=("none", "macs"),
        default=d.weighting,
        help="none: the paper's loss; macs: each term weighted by the MACs it saves",
    )
    t.add_argument("--target", type=float, default=d.target, help="AIG: target execution rate")
    t.add_argument("--aig-weight", type=float, default=d.aig_weight, help="AIG: loss weight")
    t.add_argument(
        "--alpha",
        type=float,
        default=d.alpha,
        help="skipnet: weight of the share of the blocks' MACs run, in the gates' reward",
    )
    t.add_argument("--ramp", type=float, default=d.ramp, help="share of training to ramp lambda")
    add_distill(t, "the dense backbone")
    t.add_argument(
        "--target-reduction",
        type=float,
        default=d.target_reduction,
        help="LC-Net: steer lam-l and lam-c so that training holds this MAC reduction "
        "(reached over --ramp; default: off, the lambdas as given)",
    )
    t.add_argument(
        "--init",
        default=d.init,
        help="start from this earlier LC-Net/AIG run's network (backbone and gates) "
        "with a fresh schedule; it must have the same model and gates",
    )
    t.add_argument(
        "--reopen",
        action="store_true",
        help="LC-Net: closed channels still get the task loss's gradient in training "
        "(straight-through at ReLU1's zero), so a channel closed by drift can open again",
    )
    t.add_argument(
        "--min-reduction",
        type=float,
        default=d.min_reduction,
        help="keep the most accurate epoch of at least this MAC reduction on the select "
        "split (default: the most accurate epoch; if none reaches it: the cheapest)",
    )
    t.add_argument("--epochs", type=int, default=d.epochs)
    t.add_argument("--batch-size", type=int, default=d.batch_size)
    t.add_argument("--lr", type=float, default=d.lr, help="backbone learning rate (cosine)")
    t.add_argument(
        "--warmup-epochs",
        type=float,
        default=d.warmup_epochs,
        help="linear learning-rate warm-up before the cosine, so that a restart from "
        "--init does not jump to its --lr",
    )
    t.add_argument("--gate-lr-scale", type=float, default=d.gate_lr_scale)
    t.add_argument("--weight-decay", type=float, default=d.weight_decay)
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--select-split", default=d.select_split, help="auto: val or test-a")
    t.add_argument("--report-split", default=d.report_split, help="auto: test or test-b")
    add_bf16(t)
    add_run_options(t, d.device)
    t.set_defaults(func=cmd_train)

    add_results(psub, "docs/results/lcnet.md", "dyve.mechanisms.lcnet.results", static=True)


def config(args: argparse.Namespace) -> Any:
    """The :class:`GateTrainConfig` the command line describes."""
    from dyve.mechanisms.lcnet.train import GateTrainConfig

    return config_from(args, GateTrainConfig, layer=not args.no_layer, channel=not args.no_channel)


def cmd_train(args: argparse.Namespace) -> int:
    """Train, keep the best checkpoint, report once; print the metrics."""
    import json

    from dyve.mechanisms.lcnet.train import train_gates

    metrics = train_gates(config(args), args.out, resume=args.resume, progress=not args.no_progress)
    if metrics:
        keys = ("top1", "baseline_top1", "macs_per_sample", "cost_reduction", "split")
        print(json.dumps({k: metrics[k] for k in keys}, indent=1))
        print(f"wrote {args.out / 'metrics.json'}")
    return 0
