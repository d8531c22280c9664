"""The ``dyve`` command line: data, zoo, cost, eval, train, demo.

Errors caused by input (bad names, missing or corrupt files) print one line and exit 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dyve.errors import DyveError


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    from dyve.cli import commands

    ap = argparse.ArgumentParser(
        prog="dyve", description="Input-adaptive inference for PyTorch CNNs."
    )
    ap.add_argument("--version", action="version", version=_version())
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_all(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dyve`` console script."""
    args = build_parser().parse_args(argv)
    try:
        rc = args.func(args)
    except DyveError as exc:
        print(f"dyve: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an output or data path that cannot be created or read
        print(f"dyve: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dyve: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


def _version() -> str:
    from dyve.version import __version__

    return f"dyve {__version__}"


if __name__ == "__main__":
    sys.exit(main())
