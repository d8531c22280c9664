"""``dyve exits fit``, ``dyve select fit`` and ``dyve adaptive results`` (Bolukbasi et al.)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dyve.cli.trainer_args import probability_or_none
from dyve.errors import DyveError
from dyve.eval.paired import DEFAULT_RULE, RULES, check_confidence


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="run directory (caches reused)")
    p.add_argument("--data", default="cifar10-jpeg", help="dataset id (default: cifar10-jpeg)")
    p.add_argument(
        "--fit-split",
        default="auto",
        help="split the policies are fitted on (auto: val when every network held it out, "
        "else test-a)",
    )
    p.add_argument("--eval-split", default="auto", help="split reported once (auto: test/test-b)")
    p.add_argument(
        "--budget",
        type=float,
        default=1.0,
        help="top-1 loss allowed on the fit split, in pp (held at --confidence)",
    )
    p.add_argument(
        "--confidence",
        type=probability_or_none,
        default=0.9,
        help="the budget holds this one-sided confidence bound of the paired loss against "
        "the reference (default 0.9; 'none': the loss on the fit split itself)",
    )
    p.add_argument(
        "--no-crossfit",
        action="store_true",
        help="judge each lambda's policy on the split it was fitted on (default: fitted on "
        "one half of the fit split, judged on the other, both ways)",
    )
    p.add_argument(
        "--rule",
        choices=RULES,
        default=DEFAULT_RULE,
        help="how the cheapest lambda within the budget is chosen: 'bound', 'bonferroni' "
        "(the bound widened for the number of lambdas compared), 'monotone' (no lambda "
        f"above one that fails), or both (default {DEFAULT_RULE})",
    )
    p.add_argument("--features", choices=("softmax", "confidence", "both"), default="both")
    p.add_argument("--lams", default=None, help="comma-separated lambda grid (default: built in)")
    p.add_argument("--limit", type=int, default=None, help="use the first N images of each split")
    p.add_argument("--latency-images", type=int, default=200, help="images timed at batch 1")
    p.add_argument("--no-progress", action="store_true")


def add(sub: Any) -> None:
    """Register ``exits``, ``select`` and ``adaptive`` on the ``add_subparsers`` object."""
    e = sub.add_parser("exits", help="early exits: heads, learned exit policies (Bolukbasi)")
    esub = e.add_subparsers(dest="exits_cmd", required=True)
    f = esub.add_parser("fit", help="train exit heads, fit and sweep policies, run the chosen one")
    f.add_argument("--model", required=True, help="zoo model with shipped weights")
    f.add_argument("--exits", default=None, help="comma-separated exit points (default: stages)")
    f.add_argument("--every", type=int, default=0, help="instead: a head every N blocks")
    f.add_argument("--pool", type=int, default=4, help="heads average-pool to POOL x POOL")
    f.add_argument(
        "--convs",
        type=int,
        default=0,
        help="stride-2 conv layers per head before the pooling, trained on the cached maps "
        "(0: linear heads; -1: at each exit as many as bring its map to at most 8 x 8)",
    )
    _common(f)
    f.set_defaults(func=cmd_exits)
    _add_evaluate(esub, "an early-exit run")

    s = sub.add_parser("select", help="network selection among zoo networks (Bolukbasi)")
    ssub = s.add_subparsers(dest="select_cmd", required=True)
    f = ssub.add_parser("fit", help="fit and sweep selection policies, run the chosen one")
    f.add_argument(
        "--models",
        default="caffe_cifar10,resnet20_cifar,resnet56_cifar",
        help="comma-separated zoo models, cheapest first",
    )
    _common(f)
    f.set_defaults(func=cmd_select)
    _add_evaluate(ssub, "a network-selection run")

    r = sub.add_parser("adaptive", help="results page of early-exit and selection runs")
    rsub = r.add_subparsers(dest="adaptive_cmd", required=True)
    f = rsub.add_parser("results", help="write the Markdown results page from run directories")
    f.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    f.add_argument("--out", required=True, type=Path, help="Markdown file to write")
    f.set_defaults(func=cmd_results)


def _add_evaluate(sub: Any, what: str) -> None:
    p = sub.add_parser(
        "evaluate",
        help=f"execute {what} at a stored lambda or a threshold policy on a split",
        description="Execute a fitted run's system at another setting (fast back-end, "
        "executed MACs) next to its reference network, into a new run directory. Choose "
        "the setting on the fit split, never on the split you report.",
    )
    p.add_argument("run", type=Path, metavar="RUN_DIR", help=f"{what} (made by fit)")
    p.add_argument("--out", required=True, type=Path, help="new run directory")
    p.add_argument("--lam", type=float, default=None, help="a stored learned policy's lambda "
                   "(default: the run's chosen one)")  # fmt: skip
    p.add_argument("--policy", choices=("max_prob", "entropy"), default=None,
                   help="a threshold baseline instead of a learned policy")  # fmt: skip
    p.add_argument("--threshold", type=float, default=None, help="the baseline's threshold")
    p.add_argument("--data", default=None, help="dataset id (default: the run's)")
    p.add_argument("--split", default=None, help="split (default: the run's eval split)")
    p.add_argument("--limit", type=int, default=None, help="use the first N images")
    p.add_argument("--latency-images", type=int, default=0,
                   help="images timed at batch 1 against the reference (0: no timing)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Execute a fitted run at another setting and print its metrics."""
    import json

    from dyve.mechanisms.adaptive.evaluate_job import EvalConfig, evaluate_run

    cfg = EvalConfig(
        run=str(args.run),
        lam=args.lam,
        policy=args.policy,
        threshold=args.threshold,
        data=args.data,
        split=args.split,
        limit=args.limit,
        latency_images=args.latency_images,
        batch_size=args.batch_size,
    )
    m = evaluate_run(cfg, args.out, progress=not args.no_progress)
    keep = ("top1", "baseline_top1", "macs_per_sample", "cost_reduction", "split", "n")
    print(json.dumps({k: m[k] for k in (*keep, "speedup_b1") if k in m}, indent=2))
    print(f"wrote {args.out / 'metrics.json'}")
    return 0


def _config(args: argparse.Namespace, models: tuple[str, ...], **extra: Any) -> Any:
    from dyve.mechanisms.adaptive.job import JobConfig
    from dyve.mechanisms.adaptive.study import LAMS

    try:
        lams = tuple(float(v) for v in args.lams.split(",")) if args.lams else LAMS
    except ValueError:
        raise DyveError(f"--lams must be comma-separated numbers, got {args.lams!r}") from None
    if any(v < 0 for v in lams):
        raise DyveError("--lams must be >= 0")
    if args.budget < 0:
        raise DyveError(f"--budget is an accuracy loss in pp and must be >= 0, got {args.budget}")
    try:
        check_confidence(args.confidence)
    except ValueError as exc:
        raise DyveError(str(exc)) from None
    if args.latency_images < 1 or (args.limit is not None and args.limit < 1):
        raise DyveError("--latency-images and --limit must be >= 1")
    return JobConfig(
        models=models,
        data=args.data,
        fit_split=args.fit_split,
        eval_split=args.eval_split,
        features=args.features,
        budget_pp=args.budget,
        confidence=args.confidence,
        crossfit=not args.no_crossfit,
        rule=args.rule,
        lams=lams,
        limit=args.limit,
        latency_images=args.latency_images,
        **extra,
    )


def _report(m: dict[str, Any], out: Path) -> None:
    if not m:  # another process of a torchrun job: rank 0 reports
        return
    print(
        f"{m['split']} ({m['n']} images; policies fitted on {m['fit_split']}): top-1 "
        f"{m['baseline_top1']:.2f} ({m['baseline']}) -> {m['top1']:.2f} %, "
        f"{m['cost_reduction']:.2f}x fewer MACs (executed), batch-1 speedup "
        f"{m['speedup_b1']:.2f}x (measured)"
        + (
            f", {m['speedup_vs_native_b1']:.2f}x against the reference in the same native runtime"
            if m.get("speedup_vs_native_b1") is not None
            else ""
        )
    )
    print(f"wrote {out}/metrics.json, curves.json, curve.png")


def cmd_exits(args: argparse.Namespace) -> int:
    """Run the early-exit job."""
    from dyve.mechanisms.adaptive.exits_job import run_exits

    exits = tuple(p.strip() for p in args.exits.split(",")) if args.exits else None
    if exits and args.every:
        raise DyveError("give --exits or --every, not both")
    cfg = _config(
        args, (args.model,), exits=exits, every=args.every, pool=args.pool, convs=args.convs
    )
    try:
        m = run_exits(cfg, args.out, progress=not args.no_progress)
    except ValueError as exc:
        raise DyveError(str(exc)) from None
    _report(m, args.out)
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    """Run the network-selection job."""
    from dyve.mechanisms.adaptive.select_job import run_select

    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    try:
        m = run_select(_config(args, models), args.out, progress=not args.no_progress)
    except ValueError as exc:
        raise DyveError(str(exc)) from None
    _report(m, args.out)
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    """Write the results page."""
    from dyve.mechanisms.adaptive.results import write_results

    write_results(args.runs, args.out)
    print(f"wrote {args.out}")
    return 0
