"""``python -m lightning_mbu.bench ...``: the ``bench`` subcommand alone, for GPU machines that lack the
training and search dependencies (optuna, albumentations) the full ``lightning-mbu`` front imports."""

import argparse
import sys

from ..cli import main
from .cli import add_parser

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="lightning-mbu")
    add_parser(parser.add_subparsers(dest="command", required=True))
    sys.exit(main(["bench", *sys.argv[1:]], parser))
