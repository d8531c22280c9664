"""``dyve dyvedeep calibrate`` (one model, one run directory) and ``dyve dyvedeep results``."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from dyve.cli.trainer_args import probability_or_none
from dyve.errors import DyveError
from dyve.eval.paired import DEFAULT_RULE, RULES


def add(sub: Any) -> None:
    """Register ``dyvedeep`` on the ``add_subparsers`` object."""
    p = sub.add_parser("dyvedeep", help="DyVEDeep: calibrate the effort knobs, build results")
    dsub = p.add_subparsers(dest="dyvedeep_cmd", required=True)
    c = dsub.add_parser(
        "calibrate",
        help="search per-layer thresholds on val under a budget, then evaluate once on test",
    )
    c.add_argument("--model", required=True, help="zoo model (see `dyve zoo list`)")
    c.add_argument("--weights", default=None, help="weights file (default: the shipped weights)")
    c.add_argument("--data", required=True, help="dataset id or folder:PATH")
    c.add_argument("--split", default="val", help="calibration split (default: val)")
    c.add_argument("--test-split", default="test", help="split evaluated once (default: test)")
    c.add_argument("--out", required=True, type=Path, help="run directory (resumed if present)")
    c.add_argument(
        "--budget",
        type=float,
        default=0.5,
        help="top-1 loss allowed on the calibration split, in pp (held at --confidence)",
    )
    c.add_argument(
        "--target-reduction",
        type=float,
        default=None,
        help="instead of --budget: the scalar-op reduction to reach (e.g. 3)",
    )
    c.add_argument(
        "--confidence",
        type=probability_or_none,
        default=0.9,
        help="hold the budget to this one-sided confidence bound of the paired loss against "
        "dense on the calibration split (default 0.9; 'none': the measured loss itself)",
    )
    c.add_argument(
        "--rule",
        choices=RULES,
        default=DEFAULT_RULE,
        help="how the operating point is chosen among the verified points: 'bound' (the "
        "cheapest whose bound passes), 'bonferroni' (the bound widened for the number of "
        "points compared), 'monotone' (no point after one that fails), or both "
        f"(default {DEFAULT_RULE}; benchmarks/NOTES.md, session 18)",
    )
    c.add_argument("--knobs", default="spet,spet_exact,sdss,sfma", help="knobs the search may use")
    c.add_argument(
        "--cost",
        choices=("ops", "time"),
        default="ops",
        help="what the search saves: scalar ops (default), or the sites' time measured in "
        "the native kernels on this machine (1 thread)",
    )
    c.add_argument(
        "--checkpoint",
        type=float,
        default=0.25,
        help="SPET check after this share of a filter's terms (< 1) or this many terms",
    )
    c.add_argument("--sdss-stride", type=int, default=2)
    c.add_argument("--sfma-statistic", choices=("variance", "range"), default="variance")
    c.add_argument("--first-layer", action="store_true", help="apply the knobs to layer 1 too")
    c.add_argument("--profile-images", type=int, default=256)
    c.add_argument("--batch-size", type=int, default=250)
    c.add_argument("--limit", type=int, default=None, help="use the first N calibration images")
    c.add_argument("--test-limit", type=int, default=None, help="use the first N test images")
    c.add_argument("--no-ablations", action="store_true", help="skip each-knob-alone test runs")
    c.add_argument("--data-dir", default=None)
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(func=cmd_calibrate)

    r = dsub.add_parser("results", help="the results page (Markdown) from calibration runs")
    r.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    r.add_argument("--out", required=True, type=Path, help="Markdown file to write")
    r.add_argument("--command", default=None, help="the command to state as the page's source")
    r.set_defaults(func=cmd_results)


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Run the calibration job and print its summary."""
    from dyve.mechanisms.dyvedeep.calibrate import CalibrationConfig
    from dyve.mechanisms.dyvedeep.job import JobConfig, run_job

    knobs = tuple(k.strip() for k in args.knobs.split(",") if k.strip())
    if not knobs:
        raise DyveError(f"--knobs {args.knobs!r} names no knob")
    if args.split == args.test_split:
        print(
            f"dyve: warning: calibrating and testing on {args.split} tests the thresholds on "
            "the images that chose them; calibrate on val (the default)",
            file=sys.stderr,
        )
    for name in ("batch_size", "profile_images"):
        if getattr(args, name) < 1:
            raise DyveError(f"--{name.replace('_', '-')} must be >= 1")
    try:
        cal = CalibrationConfig(
            budget_pp=args.budget,
            target_reduction=args.target_reduction,
            knobs=knobs,
            profile_images=args.profile_images,
            batch_size=args.batch_size,
            cost=args.cost,
            confidence=args.confidence,
            rule=args.rule,
        )
        cfg = JobConfig(
            model=args.model,
            data=args.data,
            weights=args.weights,
            split=args.split,
            test_split=args.test_split,
            limit=args.limit,
            test_limit=args.test_limit,
            data_dir=args.data_dir,
            checkpoint=args.checkpoint,
            sdss_stride=args.sdss_stride,
            sfma_statistic=args.sfma_statistic,
            first_layer=args.first_layer,
            ablations=not args.no_ablations,
            calibration=cal,
        )
    except ValueError as exc:
        raise DyveError(str(exc)) from None
    command = shlex.join(["dyve", *sys.argv[1:]]) if sys.argv[1:2] == ["dyvedeep"] else None
    m = run_job(cfg, args.out, progress=not args.no_progress, log=print, command=command)
    if not m:  # another process of a torchrun job: rank 0 reports
        return 0
    c = m["calibration"]
    print(
        f"{args.model}: calibrated on {c['n']} {args.split} images "
        f"({c['steps']} steps, {c['verified_points']} verified); chosen step {c['chosen_step']}"
    )
    print(
        f"test ({m['n']} images, costs {m['cost_mode']}): top-1 {m['baseline_top1']:.2f} -> "
        f"{m['top1']:.2f} % ({m['accuracy_loss_pp']:+.2f} pp loss), "
        f"{m['op_reduction']:.2f}x fewer scalar ops, {m['mac_reduction']:.2f}x fewer MACs"
    )
    print(f"wrote {args.out}/metrics.json, curve.png, dynamic.json")
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    """Write the results page from run directories."""
    from dyve.mechanisms.dyvedeep.results import write_results

    write_results(args.runs, args.out, command=args.command)
    print(f"wrote {args.out}")
    return 0
