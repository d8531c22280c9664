"""``dyve export RUN_DIR --out DIR``: static segments compiled, routing kept (:mod:`dyve.export`).

The compiled model is checked against the eager one on real images before anything is
written; ``dyve bench DIR`` then times it against the dense model, eager and compiled.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add(sub: Any) -> None:
    """Register ``export`` on the ``add_subparsers`` object."""
    p = sub.add_parser(
        "export", help="compile a saved dynamic model's static segments for deployment"
    )
    p.add_argument(
        "run_dir", type=Path, metavar="RUN_DIR", help="a run with dynamic.json or selection.json"
    )
    p.add_argument("--out", type=Path, required=True, help="folder for the exported model")
    p.add_argument(
        "--data", default="sample", help="images of the check (default: the embedded sample)"
    )
    p.add_argument("--split", default="test")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--check-images", type=int, default=16, help="images of the check")
    p.add_argument(
        "--tol", type=float, default=1e-4, help="largest relative logit difference allowed"
    )
    p.add_argument(
        "--min-macs",
        type=float,
        default=None,
        help="compile segments of at least this many MACs per sample (default: 10e6)",
    )
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    """Export, check, print the segments and the check."""
    from dyve import data
    from dyve.errors import DyveError
    from dyve.export import export
    from dyve.report.subjects import load_run

    if args.check_images < 1:
        raise DyveError(f"--check-images must be >= 1, got {args.check_images}")
    if not args.tol >= 0 or (args.min_macs is not None and not args.min_macs >= 0):
        raise DyveError("--tol and --min-macs must be >= 0")
    subject = load_run(args.run_dir)
    images = data.load_images(
        args.data, args.split, args.data_dir, limit=args.check_images, shape=subject.input_shape
    )
    x, _ = next(data.batches(images, len(images), subject.norm))
    print(f"compiling the static segments of {args.run_dir} (inductor; seconds per segment)")
    kw = {} if args.min_macs is None else {"min_macs": args.min_macs}
    desc = export(args.run_dir, args.out, x, tol=args.tol, **kw)
    c = desc["check"]
    small = [n for n in desc["segments"] if n not in desc["compiled"]]
    if desc["native"]:
        print(
            "it runs as native programs (dyve's runtime), which compiling its segments would "
            "replace: nothing compiled, and it loads frozen (dyve.dynamic.frozen)"
        )
        small = []
    print(
        f"{len(desc['compiled'])} of {len(desc['segments'])} static segments compiled: "
        + (", ".join(desc["compiled"]) or "none")
    )
    if small:
        print(
            f"{len(small)} left eager (under {desc['min_segment_macs'] / 1e6:g} M MACs per "
            "sample, where compiling does not pay)"
        )
    print(
        f"check on {c['images']} images, batch 1 and batch {c['images']}: max relative logit "
        f"difference {c['max_rel_diff']:.2e} (tol {c['tol']:.0e}), same decisions and costs: "
        f"{c['same_costs']}"
    )
    print(f"wrote {args.out / 'export.json'}; time it with `dyve bench {args.out}`")
    return 0
