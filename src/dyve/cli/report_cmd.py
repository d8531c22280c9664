"""``dyve report RUN_DIR... --out DIR``: one HTML + Markdown report across runs and methods.

Every run is measured again on the same images (the embedded sample by default) and timed
in one interleaved run, with a dense row per reference architecture; see
:mod:`dyve.report`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add(sub: Any) -> None:
    """Register ``report`` on the ``add_subparsers`` object."""
    p = sub.add_parser(
        "report",
        help="one HTML + Markdown report comparing saved runs on the same images",
    )
    p.add_argument(
        "run_dirs",
        type=Path,
        nargs="+",
        metavar="RUN_DIR",
        help="runs with dynamic.json or selection.json",
    )
    p.add_argument("--out", type=Path, required=True, help="folder for report.html/.md/.json")
    p.add_argument(
        "--data",
        default="sample",
        help="dataset id or folder:PATH (default: the embedded 1,000-image sample)",
    )
    p.add_argument("--split", default="test", help="split of --data (default: test)")
    p.add_argument("--data-dir", default=None, help="dataset cache folder")
    p.add_argument("--limit", type=int, default=None, help="use the first N images")
    p.add_argument(
        "--repeats",
        type=int,
        default=48,
        help="interleaved batch-1 timing rounds, best 3 per latency image (0: no timing)",
    )
    p.add_argument("--latency-images", type=int, default=16, help="images cycled in timing")
    p.add_argument(
        "--labels",
        default=None,
        help="comma-separated row labels, one per RUN_DIR (default: folder names)",
    )
    p.add_argument("--title", default="dyve report")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    """Load the runs, measure and time them, write the report."""
    from dyve import data
    from dyve._io import check_out
    from dyve.errors import DyveError
    from dyve.report import collect, load_run, with_dense, write

    if args.repeats < 0 or args.latency_images < 1:
        raise DyveError("--repeats must be >= 0 and --latency-images >= 1")
    if args.limit is not None and args.limit < 1:
        raise DyveError(f"--limit must be >= 1, got {args.limit}")
    check_out(args.out)  # a report folder may be written again, a run's folder may not
    if args.labels is not None:
        labels = [x.strip() for x in args.labels.split(",")]
        if len(labels) != len(args.run_dirs) or not all(labels):
            raise DyveError(f"--labels needs {len(args.run_dirs)} non-empty labels")
    else:
        names = [r.name for r in args.run_dirs]
        dup = {x for x in names if names.count(x) > 1}
        labels = [f"{r.parent.name}/{r.name}" if r.name in dup else r.name for r in args.run_dirs]
    subjects = [load_run(r, label) for r, label in zip(args.run_dirs, labels, strict=True)]
    subjects = with_dense(subjects)
    shapes = {s.input_shape for s in subjects}
    if len(shapes) != 1:
        raise DyveError(f"the runs take different input shapes {sorted(shapes)}")
    images = data.load_images(
        args.data, args.split, args.data_dir, limit=args.limit, shape=shapes.pop()
    )
    col = collect(
        subjects,
        images,
        latency_images=args.latency_images,
        repeats=args.repeats,
        progress=not args.no_progress,
    )
    paths = write(col, args.out, title=args.title)
    print(Path(paths["md"]).read_text(encoding="utf-8").split("\n\n## ")[0])
    print(f"wrote {paths['html']}, {paths['md']} and {paths['json']}")
    return 0
