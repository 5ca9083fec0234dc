"""``python -m lightning_mbu.bench ...``: the ``bench`` subcommand alone, for GPU machines that lack the
training and search dependencies (optuna, albumentations) the full ``lightning-mbu`` front imports."""

import sys

from ..cli import build_parser, main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]], build_parser(["bench"])))
