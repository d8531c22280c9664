"""``dyve bench RUN_DIR``: time a saved dynamic network against its dense backbone.

Reads ``RUN_DIR/dynamic.json`` + ``dynamic.safetensors`` (written by ``dyve.dynamic.save``),
or a network selection (``selection.json``, timed against its most accurate network),
times it on real images (the embedded CIFAR-10 sample by default) and writes
``RUN_DIR/bench.json`` (see :mod:`dyve.bench`). A folder written by ``dyve export`` is
timed twice: the eager dynamic network and the exported one (segments compiled).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn


def add(sub: Any) -> None:
    """Register ``bench`` on the ``add_subparsers`` object."""
    p = sub.add_parser(
        "bench",
        help="time a saved dynamic network against its dense backbone (eager and compiled)",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="folder of a saved dynamic net")
    p.add_argument(
        "--data", default=None, help="dataset id or folder:PATH (default: the embedded sample)"
    )
    p.add_argument("--split", default="test", help="split of --data (default: test)")
    p.add_argument("--data-dir", default=None, help="dataset cache folder")
    p.add_argument(
        "--repeats",
        type=int,
        default=30,
        help="timed calls at batch 1, over repeats/3 images (batch 64: a third)",
    )
    p.add_argument(
        "--no-compile", action="store_true", help="skip the torch.compile baseline (null)"
    )
    p.add_argument(
        "--frozen",
        action="store_true",
        help="time the network frozen, as deployed (native programs take the weights as "
        "constants, no per-call check of them; the dense native reference alike)",
    )
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    """Load the run, time it, write ``bench.json`` and print the table."""
    from dyve import data
    from dyve._io import write_json
    from dyve.bench import VISITS, bench, format_table
    from dyve.dynamic import load
    from dyve.errors import DyveError
    from dyve.models import create, model_info

    run_dir: Path = args.run_dir
    if not run_dir.is_dir():
        raise DyveError(f"{run_dir}: no such run directory")
    if args.repeats < 1:
        raise DyveError(f"--repeats must be >= 1, got {args.repeats}")
    reference = None
    net: nn.Module
    if (run_dir / "selection.json").is_file():  # against its most accurate network
        net, reference = _selection(run_dir)
        info = model_info(reference[0])
    else:
        dyn = load(run_dir)
        info = model_info(create(str(dyn.backbone_id), **dyn.backbone_kwargs))
        net = dyn
    exported = None
    if (run_dir / "export.json").is_file():  # written by dyve export: time it as well
        from dyve.export import load as load_export

        exported = load_export(run_dir)
    dataset = args.data or "sample"
    images = data.load_images(dataset, args.split, args.data_dir, shape=info.input_size)
    source = {"dataset": dataset, "split": images.split}
    # each batch-1 image is timed VISITS times (its median drops one-off stalls)
    n1, n64 = min(max(1, args.repeats // VISITS), len(images)), min(64, len(images))
    x, _ = next(data.batches(images, max(n1, n64), info.norm))
    result = bench(
        net,
        x[:n1],
        x[:n64],
        repeats=args.repeats,
        compile=not args.no_compile,
        exported=exported,
        reference=reference,
        frozen=args.frozen,
    )
    result["data"] = {**source, "images_b1": n1, "images_b64": n64}
    result["run_dir"] = str(run_dir)
    write_json(run_dir / "bench.json", result)
    print(format_table(result))
    print(f"wrote {run_dir / 'bench.json'}")
    return 0


def _selection(run_dir: Path) -> tuple[nn.Module, tuple[nn.Module, dict[str, Any]]]:
    """A ``dyve select fit`` run at its chosen lambda, and the network it is timed against:
    the run's reference (the most accurate single network on its fit split; the largest
    where ``metrics.json`` is missing), as in the run's own measurement."""
    from dyve._io import read_json
    from dyve.mechanisms.adaptive.select_job import load_selection

    sel = load_selection(run_dir)
    names = list(sel.graph.names)
    metrics = run_dir / "metrics.json"
    ref = read_json(metrics).get("baseline", names[-1]) if metrics.is_file() else names[-1]
    if ref not in names:
        ref = names[-1]
    about = {
        "backbone": ref,
        "backbone_kwargs": {},
        "mechanisms": [{"name": "network_selection", "networks": names}],
        "knobs": {"lam": sel.policy.lam} if hasattr(sel.policy, "lam") else {},
    }
    return sel, (sel.networks[ref], about)
