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
    "predict": "predict",
    "bench": "bench",
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every flag's default, except where its help already says it or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or not action.option_strings \
                or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            return text
        return f"{text} (default: %(default)s)".lstrip()


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line naming the flag, without the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(modules=None) -> argparse.ArgumentParser:
    """The parser of every subcommand, or of ``modules`` (names in SUBCOMMANDS' values) alone."""
    from . import __version__

    parser = Parser(prog="lightning-mbu", description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in modules or dict.fromkeys(SUBCOMMANDS.values()):
        import_module(f"lightning_mbu.commands.{module}").add_parser(sub)
    for p in sub.choices.values():
        p.formatter_class = HelpFormatter
    return parser


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    """Run a subcommand; ``parser`` (default: every subcommand's) lets one part run without the others' imports."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = (parser or build_parser()).parse_args(argv)
    args.argv = argv  # as typed: an interrupted run prints the command that resumes it
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as e:  # bad input, missing or unwritable files: one line, no traceback
        print(f"lightning-mbu {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lightning-mbu {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
