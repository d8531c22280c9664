"""Sub-commands of the ``dyve`` CLI; each ``cmd_*`` takes the parsed arguments."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dyve.cli import (
    adaptive_cmd,
    bench_cmd,
    d2nn_cmd,
    dyvedeep_cmd,
    export_cmd,
    lcnet_cmd,
    report_cmd,
    sweep_cmd,
)
from dyve.cli.trainer_args import add_bf16, add_distill

if TYPE_CHECKING:
    from dyve.train.trainer import TrainConfig


def add_all(sub: Any) -> None:
    """Register every sub-command on the ``add_subparsers`` object."""
    _add_demo(sub)
    _add_data(sub)
    _add_zoo(sub)
    _add_cost(sub)
    _add_eval(sub)
    _add_train(sub)
    _add_discover(sub)
    sweep_cmd.add(sub)
    bench_cmd.add(sub)
    dyvedeep_cmd.add(sub)
    adaptive_cmd.add(sub)
    lcnet_cmd.add(sub)
    d2nn_cmd.add(sub)
    report_cmd.add(sub)
    export_cmd.add(sub)


def _add_discover(sub: Any) -> None:
    p = sub.add_parser("discover", help="sites, residual blocks and stages of a zoo model")
    p.add_argument("--model", required=True)
    p.set_defaults(func=cmd_discover)


def cmd_discover(args: argparse.Namespace) -> int:
    """Print what structure discovery finds in a model."""
    from dyve import models
    from dyve.graph import discover

    print(discover(models.create(args.model)))
    return 0


def _add_demo(sub: Any) -> None:
    p = sub.add_parser(
        "demo", help="every method on embedded CIFAR-10 data and weights, then a report"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("dyve-demo"),
        help="folder for the report and metrics.json (default: dyve-demo)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=48,
        help="batch-1 timing rounds (dense table: median; methods: 3 per image of 16)",
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="measure the methods on the whole CIFAR-10 test split (prepared cifar10-jpeg)",
    )
    p.add_argument("--data-dir", default=None, help="dataset cache folder (with --full)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo."""
    from dyve._io import check_out
    from dyve.demo import run_demo
    from dyve.errors import DyveError

    if args.repeats < 1:
        raise DyveError(f"--repeats must be >= 1, got {args.repeats}")
    if args.data_dir is not None and not args.full:
        raise DyveError("--data-dir is for --full; the demo runs on the embedded images")
    check_out(args.out)
    run_demo(
        args.out,
        repeats=args.repeats,
        full=args.full,
        data_dir=args.data_dir,
        progress=not args.no_progress,
    )
    return 0


def _add_data(sub: Any) -> None:
    p = sub.add_parser("data", help="prepare and list datasets")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    pp = dsub.add_parser("prepare", help="convert raw files into dyve's cache")
    pp.add_argument("name", help="dataset id (see `dyve data list`)")
    pp.add_argument("--source", default=None, help="raw file or the folder holding it")
    pp.add_argument(
        "--data-dir", default=None, help="cache folder (default $DYVE_DATA or ~/.cache/dyve/data)"
    )
    pp.add_argument("--force", action="store_true", help="rebuild an existing cache")
    pp.add_argument("--no-verify", action="store_true", help="skip checksum verification")
    pp.set_defaults(func=cmd_data_prepare)
    pl = dsub.add_parser("list", help="datasets, their splits and whether they are prepared")
    pl.add_argument("--data-dir", default=None)
    pl.set_defaults(func=cmd_data_list)


def cmd_data_prepare(args: argparse.Namespace) -> int:
    """Prepare a dataset and report the split sizes."""
    from dyve import data
    from dyve.errors import DataError

    out = data.prepare(
        args.name, args.source, args.data_dir, verify=not args.no_verify, force=args.force
    )
    print(f"{args.name}: prepared in {out}")
    for split in data.DATASETS.get(args.name).splits:
        try:
            print(f"  {split:<9} {len(data.load(args.name, split, args.data_dir)):>6} images")
        except DataError as exc:
            print(f"  {split:<9}      - ({exc})")
    return 0


def cmd_data_list(args: argparse.Namespace) -> int:
    """List registered datasets."""
    from dyve import data

    print(f"data dir: {data.data_dir(args.data_dir)}")
    for name in data.DATASETS:
        spec = data.DATASETS.get(name)
        state = "prepared" if data.is_prepared(name, args.data_dir) else "not prepared"
        print(f"{name:<15} {state:<13} splits: {', '.join(spec.splits):<26} {spec.description}")
    print(
        f"{'folder:PATH':<15} {'-':<13} splits: {'(sub-folders)':<26} "
        "your own images, one folder per class"
    )
    return 0


def _add_zoo(sub: Any) -> None:
    p = sub.add_parser("zoo", help="the model zoo")
    zsub = p.add_subparsers(dest="zoo_command", required=True, metavar="ACTION")
    pl = zsub.add_parser("list", help="models, their cost and shipped weights")
    pl.set_defaults(func=cmd_zoo_list)


def cmd_zoo_list(args: argparse.Namespace) -> int:
    """List zoo models with MACs, parameters and shipped-weight accuracy."""
    from dyve import models
    from dyve.cost import static_cost

    shipped = set(models.shipped_models())
    print(
        f"{'model':<22} {'MACs/sample':>12} {'params':>10}  {'weights':<8} {'test top-1':>10}  "
        "description"
    )
    for name in models.list_models():
        net = models.create(name)
        macs = static_cost(net).total_macs
        params = sum(p.numel() for p in net.parameters())
        top1 = f"{models.shipped_meta(name)['test_top1']:.2f}%" if name in shipped else "-"
        w = "shipped" if name in shipped else "-"
        print(
            f"{name:<22} {macs / 1e6:>10.1f} M {params / 1e6:>8.2f} M  {w:<8} {top1:>10}  "
            f"{models.model_info(net).description}"
        )
    print(
        "MACs: multiply-accumulates per 3x32x32 sample; test top-1 on cifar10-jpeg test (10,000)."
    )
    return 0


def _add_cost(sub: Any) -> None:
    p = sub.add_parser("cost", help="per-layer static cost table of a model")
    p.add_argument("--model", required=True)
    p.add_argument("--all", action="store_true", help="list every module, not only those with MACs")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_cost)


def cmd_cost(args: argparse.Namespace) -> int:
    """Print the cost table."""
    import json

    from dyve import models
    from dyve.cost import static_cost

    table = static_cost(models.create(args.model))
    print(json.dumps(table.as_dict(), indent=2) if args.json else table.format(all_rows=args.all))
    return 0


def _add_eval(sub: Any) -> None:
    p = sub.add_parser("eval", help="evaluate a model on a dataset split into a run directory")
    p.add_argument("--model", required=True)
    p.add_argument("--weights", default=None, help="weights file (default: the shipped weights)")
    p.add_argument("--data", required=True, help="dataset id, folder:PATH, or 'sample' (embedded)")
    p.add_argument("--split", default="test")
    p.add_argument("--out", type=Path, default=None, help="run directory for metrics.json")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate and print the metrics."""
    import json

    from dyve.eval.run import eval_run

    m = eval_run(
        args.model,
        args.data,
        args.split,
        args.out,
        weights=args.weights,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        data_root=args.data_dir,
    )
    if m:  # empty on the other processes of a torchrun job
        print(json.dumps({k: v for k, v in m.items() if k != "cost_convention"}, indent=2))
    return 0


def _add_train(sub: Any) -> None:
    from dyve.train.trainer import TrainConfig

    p = sub.add_parser("train", help="train or fine-tune a zoo model (SGD + cosine, crop/flip)")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--no-progress", action="store_true")
    defaults = TrainConfig("x")
    for name in (
        "data",
        "init",
        "origin",
        "epochs",
        "batch_size",
        "lr",
        "momentum",
        "weight_decay",
        "warmup_epochs",
        "seed",
        "device",
        "threads",
        "limit_train",
    ):
        default = getattr(defaults, name)
        typ = (
            type(default)
            if default is not None
            else (int if name in ("threads", "limit_train") else str)
        )
        p.add_argument(f"--{name.replace('_', '-')}", type=typ, default=default)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--no-nesterov", action="store_true")
    p.add_argument("--no-channels-last", action="store_true", help="keep NCHW memory format")
    add_bf16(p)
    add_distill(p, "the shipped --model")
    p.set_defaults(func=cmd_train)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` that ``dyve train`` arguments describe."""
    from dyve.train.trainer import TrainConfig

    return TrainConfig(
        model=args.model,
        data=args.data,
        init=args.init,
        origin=args.origin,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        nesterov=not args.no_nesterov,
        channels_last=not args.no_channels_last,
        bf16=args.bf16,
        distill=args.distill,
        temperature=args.temperature,
        teacher=args.teacher,
        teacher_flip=args.teacher_flip,
        warmup_epochs=args.warmup_epochs,
        augment=not args.no_augment,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        limit_train=args.limit_train,
    )


def cmd_train(args: argparse.Namespace) -> int:
    """Train a model and print its final metrics."""
    import json

    from dyve.train.trainer import train

    metrics = train(train_config(args), args.out, resume=args.resume, progress=not args.no_progress)
    print(json.dumps(metrics, indent=2))
    return 0
