"""Command-line pieces the method commands share: run options, the results sub-command,
configs, the budget's confidence."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any


def probability_or_none(text: str) -> float | None:
    """``--confidence``: a probability, or ``none`` (range checked by the configs)."""
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a probability or 'none', got {text!r}") from None


def add_run_options(t: argparse.ArgumentParser, device: str = "auto") -> None:
    """Quick-check limits, threads, device, resume and progress of a training command."""
    t.add_argument("--limit-train", type=int, default=None, help="first N training images")
    t.add_argument("--limit-eval", type=int, default=None, help="first N images of eval splits")
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--device", default=device)
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("--no-progress", action="store_true")


def add_bf16(t: argparse.ArgumentParser) -> None:
    """``--bf16`` of the training commands (:class:`dyve.train.loop.Schedule`)."""
    t.add_argument(
        "--bf16",
        action="store_true",
        help="train under bfloat16 autocast; weights, gradients and optimiser stay float32 "
        "(fast on CPUs with AMX and on GPUs; benchmarks/train_step.py)",
    )


def add_distill(t: argparse.ArgumentParser, default_teacher: str) -> None:
    """``--distill``, ``--temperature``, ``--teacher``, ``--teacher-flip`` of the training
    commands (:mod:`dyve.train.distill`); ``default_teacher`` says who teaches by default."""
    from dyve.train.distill import DISTILL_ADDED as d  # the settings' defaults

    t.add_argument(
        "--distill",
        type=float,
        default=d["distill"],
        help=f"weight in [0, 1] of distillation from {default_teacher} (default 0: off)",
    )
    t.add_argument(
        "--temperature", type=float, default=d["temperature"], help="distillation temperature"
    )
    t.add_argument(
        "--teacher",
        default=d["teacher"],
        help="distil from these shipped networks, comma-separated, their soft targets "
        f"averaged (default: {default_teacher})",
    )
    t.add_argument(
        "--teacher-flip",
        action="store_true",
        help="average the teacher over each image and its mirror image",
    )


def add_results(psub: Any, page: str, module: str, *, static: bool = False) -> None:
    """The ``results`` sub-command: ``module.write_results(runs, out)`` writes a results
    page from run directories (the module is imported when the command runs). With
    ``static``, ``--static`` passes ``dyve eval`` runs of static networks as ``static=``."""

    def cmd_results(args: argparse.Namespace) -> int:
        import importlib

        from dyve.errors import DyveError

        if args.out.is_dir():
            raise DyveError(f"--out {args.out} is a folder; name the Markdown file to write")
        extra = {"static": args.static} if static else {}
        importlib.import_module(module).write_results(args.runs, args.out, **extra)
        print(f"wrote {args.out}")
        return 0

    r = psub.add_parser("results", help=f"write {page} from run directories")
    r.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    r.add_argument("--out", required=True, type=Path, help="Markdown file to write")
    if static:
        r.add_argument(
            "--static",
            nargs="+",
            type=Path,
            default=[],
            metavar="EVAL_RUN",
            help="`dyve eval` runs of static networks on the same split, shown beside the "
            "runs as references of their cost",
        )
    r.set_defaults(func=cmd_results)


def config_from(args: argparse.Namespace, cls: type, **overrides: Any) -> Any:
    """``cls`` (a config dataclass) from the options of the same names; bad values are a
    :class:`~dyve.errors.DyveError` (one line, no traceback)."""
    from dyve.errors import DyveError

    values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
    try:
        return cls(**{**values, **overrides})
    except ValueError as exc:
        raise DyveError(str(exc)) from None
