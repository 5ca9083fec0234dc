"""`python -m lightning_mbu ...`: the `lightning-mbu` command, for environments without its script on PATH."""

import sys

from .cli import main

sys.exit(main())
