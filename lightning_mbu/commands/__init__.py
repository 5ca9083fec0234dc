"""The `lightning-mbu` subcommands, one module each, every one exposing ``add_parser(subparsers)``.

``lightning_args`` holds the data and Trainer flags that ``train`` and ``eval`` share. Modules import
the library lazily (inside ``run``), so ``bench`` works on machines without optuna or albumentations.
"""
