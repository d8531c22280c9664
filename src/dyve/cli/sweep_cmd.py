"""``dyve sweep``: a whole accuracy-versus-cost curve, its operating point, and the saved net.

Builds a zoo model, equips it with one mechanism, sweeps one knob over a dataset split
(``val`` by default: operating points are chosen on validation data, never on test) and
writes the run directory: ``config.json``, ``curve.json``, ``curve.png``, ``curve.svg``,
``metrics.json`` and the network set to the operating point (``dynamic.json`` +
``dynamic.safetensors``, so ``dyve.dynamic.load(RUN_DIR)`` rebuilds it).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dyve.errors import DyveError

if TYPE_CHECKING:
    from dyve.data.core import ImageSet
    from dyve.dynamic.net import DynamicNet
    from dyve.mechanisms.base import Mechanism


def add(sub: Any) -> None:
    """Register ``sweep`` on the ``add_subparsers`` object."""
    p = sub.add_parser(
        "sweep",
        help="sweep one knob of a dynamic network into a trade-off curve and operating point",
    )
    p.add_argument("--model", required=True, help="zoo model (see `dyve zoo list`)")
    p.add_argument("--weights", default=None, help="weights file (default: the shipped weights)")
    p.add_argument("--mechanism", required=True, help="registered mechanism, e.g. block_skip")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="mechanism config field (value parsed as JSON, else a string); repeatable",
    )
    p.add_argument("--knob", required=True, help="knob to sweep, e.g. threshold")
    p.add_argument(
        "--values",
        required=True,
        help='comma-separated values, e.g. 0.2,0.5,1 or [],["layer1.0"]; a list that starts '
        "with a minus sign takes an equals sign: --values=-1,0",
    )
    p.add_argument("--data", required=True, help="dataset id, folder:PATH, or 'sample' (embedded)")
    p.add_argument("--split", default="val", help="split (default: val; never tune on test)")
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.add_argument("--backend", choices=("fast", "emulated"), default="fast")
    p.add_argument(
        "--budget",
        type=float,
        default=1.0,
        help="operating point: cheapest point within this many top-1 points of the reference",
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--limit", type=int, default=None, help="use only the first N images")
    p.add_argument("--latency-repeats", type=int, default=10, help="batch-1 timing rounds (0: off)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run the sweep, write the run directory and print the table."""
    from dyve import data as dyve_data
    from dyve._io import check_out, write_json
    from dyve.cost import CONVENTION
    from dyve.dynamic import equip, save
    from dyve.eval.latency import machine
    from dyve.eval.sweep import apply_point, sweep
    from dyve.mechanisms import MECHANISMS
    from dyve.models import create, model_info
    from dyve.version import __version__

    _check_numbers(args)
    weights = str(args.weights) if args.weights else "shipped"
    # the same knob of the same network on the same data may be swept again
    check_out(
        args.out,
        {"model": args.model, "weights": weights, "mechanism": args.mechanism, "knob": args.knob},
    )
    mech = build_mechanism(MECHANISMS.get(args.mechanism), args.set)
    values = parse_values(args.values)
    backbone = create(args.model, pretrained=args.weights if args.weights else True)
    info = model_info(backbone)
    images = _load_images(args, info.input_size)
    try:
        net = equip(backbone, mech, backend=args.backend)
    except (ValueError, TypeError) as exc:
        raise DyveError(f"{args.mechanism}: cannot equip {args.model}: {exc}") from None
    knob_key = _check_knob(net, args.knob, values)

    curve = sweep(
        net,
        images,
        args.knob,
        values,
        norm=info.norm,
        batch_size=args.batch_size,
        latency_repeats=args.latency_repeats,
        progress=not args.no_progress,
    )
    op = curve.operating_point(args.budget)
    out: Path = args.out
    config = {
        "command": _command_line(args),
        "model": args.model,
        "weights": weights,
        "mechanism": args.mechanism,
        "mechanism_config": mech.config_dict(),
        "knob": args.knob,
        "knob_key": knob_key,
        "values": [p.value for p in curve.points if not p.reference],
        "dataset": args.data,
        "split": images.split,
        "limit": args.limit,
        "n": len(images),
        "backend": args.backend,
        "budget_pp": args.budget,
        "batch_size": args.batch_size,
        "latency_repeats": args.latency_repeats,
        "data_dir": str(dyve_data.data_dir(args.data_dir)),
        "dyve_version": __version__,
        "machine": machine(),
    }
    write_json(out / "config.json", config)
    curve.to_json(out / "curve.json")
    curve.plot(out / "curve")
    write_json(
        out / "metrics.json",
        {
            "budget_pp": args.budget,
            "operating_point": asdict(op),
            "reference": asdict(curve.reference),
            "pareto": [asdict(p) for p in curve.pareto()],
            "static_macs": curve.static_macs,
            "cost_mode": curve.cost_mode,
            "cost_convention": CONVENTION,
            "dataset": curve.dataset,
            "split": curve.split,
            "n": curve.n,
        },
    )
    apply_point(net, op)
    save(net, out)
    print(curve.table())
    print(
        f"\noperating point (top-1 within {args.budget:g} pp of the reference): "
        f"{args.knob}={op.label()}, top-1 {op.top1:.2f}% (reference {curve.reference.top1:.2f}%), "
        f"{op.macs_mean / 1e6:.2f} M MACs mean ({op.cost_reduction:.2f}x fewer, {op.cost_mode})"
    )
    if args.data == "sample":
        print(
            "note: the embedded sample comes from the CIFAR-10 test set; "
            "choose reported operating points on a val split"
        )
    print(f"wrote {out}: config.json curve.json curve.png curve.svg metrics.json dynamic.*")
    return 0


# ---------------------------------------------------------------------- argument parsing
def parse_value(text: str) -> Any:
    """A ``--set``/``--values`` item: JSON if it parses, else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_values(text: str) -> list[Any]:
    """``--values``: a JSON list body (``0.1,0.5`` or ``[],["a"]``), else comma-split items."""
    try:
        values = json.loads(f"[{text}]")
    except json.JSONDecodeError:
        values = [parse_value(v.strip()) for v in text.split(",") if v.strip()]
    if not isinstance(values, list) or not values:
        raise DyveError(f"--values {text!r}: give at least one value, e.g. 0.2,0.5,1")
    return values


def build_mechanism(cls: type[Mechanism], items: list[str]) -> Mechanism:
    """The mechanism with ``key=value`` overrides of its config; unknown keys are an error."""
    by_name = {f.name: f for f in fields(cls.config_class)}
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise DyveError(f"--set {item!r}: expected KEY=VALUE")
        if key not in by_name:
            raise DyveError(
                f"--set {key}: {cls.name} has no config key {key!r}; keys: {', '.join(by_name)}"
            )
        default = by_name[key].default
        overrides[key] = _coerce(cls.name, key, parse_value(raw), default)
    try:
        return cls.from_config_dict(overrides)
    except (ValueError, TypeError) as exc:
        raise DyveError(f"{cls.name}: bad config: {exc}") from None


def _coerce(mech: str, key: str, value: Any, default: Any) -> Any:
    """Check ``value`` against the type of the field's default (None default: anything)."""
    if default is MISSING:
        return value
    if value is None:
        if default is None:
            return value
        raise DyveError(f"--set {key}=null: {mech}.{key} takes a {type(default).__name__}")
    if default is None or isinstance(default, tuple):  # tuple fields: one name is a 1-list
        return [value] if isinstance(value, str) else value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int | float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = type(default)(value) if ok and isinstance(default, float) else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise DyveError(
            f"--set {key}={json.dumps(value)}: {mech}.{key} takes a {type(default).__name__}"
        )
    return value


def _check_numbers(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise DyveError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise DyveError(f"--limit must be >= 1, got {args.limit}")
    if args.latency_repeats < 0:
        raise DyveError(f"--latency-repeats must be >= 0, got {args.latency_repeats}")
    if not args.budget >= 0:
        raise DyveError(f"--budget must be >= 0 (top-1 points), got {args.budget}")


def _load_images(args: argparse.Namespace, shape: tuple[int, int, int]) -> ImageSet:
    from dyve import data as dyve_data

    if args.data != "sample" and args.split == "test":
        print(
            "dyve: warning: sweeping on test chooses an operating point on test data; "
            "use --split val for calibration",
            file=sys.stderr,
        )
    return dyve_data.load_images(
        args.data, args.split, args.data_dir, limit=args.limit, shape=shape
    )


def _check_knob(net: DynamicNet, knob: str, values: list[Any]) -> str:
    """Refuse unknown knobs and values the knob does not take; return ``mechanism.knob``."""
    from dyve.eval.sweep import restored_knobs

    mech, name = net.resolve_knob(knob)
    with restored_knobs(net):
        for v in values:
            try:
                net.set_knobs(**{knob: v})
            except (ValueError, TypeError, KeyError) as exc:
                msg = exc.args[0] if exc.args else exc
                raise DyveError(f"--values: {knob}={json.dumps(v)} is not valid: {msg}") from None
    return f"{mech.name}.{name}"


def _command_line(args: argparse.Namespace) -> str:
    """The equivalent command line, every setting spelled out (for ``config.json``)."""
    argv = ["dyve", "sweep", "--model", args.model]
    if args.weights:
        argv += ["--weights", str(args.weights)]
    argv += ["--mechanism", args.mechanism]
    for item in args.set:
        argv += ["--set", item]
    argv += ["--knob", args.knob, f"--values={args.values}", "--data", args.data]
    if args.data != "sample":
        argv += ["--split", args.split]
    argv += ["--out", str(args.out), "--backend", args.backend]
    argv += ["--budget", f"{args.budget:g}", "--batch-size", str(args.batch_size)]
    if args.limit is not None:
        argv += ["--limit", str(args.limit)]
    argv += ["--latency-repeats", str(args.latency_repeats)]
    if args.data_dir:
        argv += ["--data-dir", str(args.data_dir)]
    return shlex.join(argv)
