"""The ``pgs-dali`` command line: one subcommand per module in this package."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Each module defines ``register(subparsers)``, which adds its subcommand(s)
# and sets ``func`` (``run(args) -> int``) as the parser default.
_SUBCOMMAND_MODULES = (
    "pgs_dali.cli.run",
    "pgs_dali.cli.shards",
    "pgs_dali.cli.bench",
    "pgs_dali.cli.retention",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the ``pgs-dali`` argument parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="pgs-dali",
        description="DALI data loader for CLIP training with PGS patch masks.",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in _SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``pgs-dali`` command line and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as error:
        # Expected mistakes (bad settings, wrong paths, bad samples under
        # --on-error raise) get one line; -v shows the traceback.
        if args.verbose:
            raise
        print(f"pgs-dali: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
