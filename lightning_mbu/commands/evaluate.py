"""`lightning-mbu eval`: Dice / IoU / F1 of a checkpoint on a split of its data, as a table and JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import (add_data_args, add_trainer_args, build_trainer, data_kwargs, metrics_table, stage_metrics,
               tested_images, write_json)

SPLITS = ("test", "val", "train", "all")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate a checkpoint: Dice, IoU, F1",
        description="Evaluate a SegmentationModule checkpoint. Data flags default to the ones it was trained "
                    "with (saved in the checkpoint), so the split is the same; flags given override them.",
    )
    p.add_argument("checkpoint", type=Path, help="a Lightning checkpoint written by `lightning-mbu train`")
    p.add_argument("--split", nargs="+", choices=SPLITS, default=["test"], help="split(s) to evaluate (default test)")
    p.add_argument("--output", type=Path, default=None, help="write the metrics as JSON here")
    add_data_args(p)
    add_trainer_args(p, fit=False)
    p.set_defaults(func=run, logger="none")
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from ..data import SegmentationDataModule
    from ..module import SegmentationModule

    if not args.checkpoint.is_file():
        raise FileNotFoundError(f"no such checkpoint: {args.checkpoint}")
    saved = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    module = SegmentationModule.load_from_checkpoint(args.checkpoint, map_location="cpu", weights_only=True)
    datamodule = SegmentationDataModule(**data_kwargs(args, saved.get("datamodule_hyper_parameters")))
    datamodule.setup()
    trainer = build_trainer(args, name="eval")

    rows = []
    for split in args.split:
        loader = datamodule.dataloader(split)
        result = trainer.test(module, dataloaders=loader, verbose=False)[0]
        rows.append({"split": split, "images": tested_images(trainer, loader), **stage_metrics(result, "test")})
    print(f"checkpoint: {args.checkpoint} (config {module.hparams.config or 'fp'}, base {module.hparams.base})")
    print(f"data: {datamodule.root} ({datamodule.layout.name}, size {datamodule.size or 'native'})")
    print(metrics_table(rows))
    if args.output:
        write_json(args.output, {
            "checkpoint": str(args.checkpoint),
            "config": module.hparams.config or "fp",
            "base": module.hparams.base,
            "data": {k: v for k, v in datamodule.hparams.items() if k != "augment"},
            "metrics": {r["split"]: {k: v for k, v in r.items() if k != "split"} for r in rows},
        })
        print(f"wrote {args.output}")
    return 0
