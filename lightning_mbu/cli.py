"""The `lightning-mbu` command: a thin front that dispatches to the subcommands in ``lightning_mbu.commands``."""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

#: subcommand -> module of ``lightning_mbu.commands`` whose ``add_parser`` registers it
SUBCOMMANDS = {
    "train": "train",
    "eval": "evaluate",
    "info": "info",
    "cost": "search",
    "search": "search",
    "export": "export",
    "bench": "bench",
}


def build_parser(modules=None) -> argparse.ArgumentParser:
    """The parser of every subcommand, or of ``modules`` (names in SUBCOMMANDS' values) alone."""
    parser = argparse.ArgumentParser(prog="lightning-mbu", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for module in modules or dict.fromkeys(SUBCOMMANDS.values()):
        import_module(f"lightning_mbu.commands.{module}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    """Run a subcommand; ``parser`` (default: every subcommand's) lets one part run without the others' imports."""
    args = (parser or build_parser()).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        print(f"lightning-mbu {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
