"""The `lightning-mbu` command: a thin front that parses arguments and calls the library.

Each subcommand lives beside the code it drives, in a module exposing
``add_parser(subparsers)`` that registers the subcommand and sets ``func``.
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

SUBCOMMANDS = {
    "train": "lightning_mbu.commands.train",
    "eval": "lightning_mbu.commands.evaluate",
    "info": "lightning_mbu.commands.info",
    "cost": "lightning_mbu.search.cli",
    "search": "lightning_mbu.search.cli",
    "export": "lightning_mbu.export.cli",
    "bench": "lightning_mbu.bench.cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lightning-mbu", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for module in dict.fromkeys(SUBCOMMANDS.values()):
        try:
            mod = import_module(module)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("lightning_mbu"):
                continue  # that part of the package is not built yet
            raise
        mod.add_parser(sub)
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
