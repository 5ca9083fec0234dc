"""`lightning-mbu eval`: Dice / IoU / F1 of a checkpoint on a split of its data, as a table and JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..files import check_output, write_json
from .lightning_args import (add_data_args, add_force_arg, add_trainer_args, build_trainer, check_accelerator,
                             data_kwargs, metrics_table, stage_metrics, tested_images)

SPLITS = ("test", "val", "train", "all")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate a checkpoint: Dice, IoU, F1",
        description="Evaluate a SegmentationModule checkpoint. Data flags default to the ones it was trained "
                    "with (saved in the checkpoint), so the split is the same; flags given override them.",
    )
    p.add_argument("checkpoint", type=Path, help="a Lightning checkpoint written by `lightning-mbu train`")
    p.add_argument("--split", nargs="+", choices=SPLITS, default=["test"], help="split(s) to evaluate (default test)")
    p.add_argument("--output", type=Path, default=None, help="write the metrics as JSON here (default: print only)")
    add_force_arg(p)
    add_data_args(p, fit=False)
    add_trainer_args(p, fit=False)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_checkpoint, load_module
    from ..data import SegmentationDataModule

    check_accelerator(args)
    if args.output:
        check_output(args.output, inputs=[args.checkpoint], force=args.force)
    ckpt = load_checkpoint(args.checkpoint)  # read once: weights, model and data hyper-parameters
    module = load_module(ckpt)
    datamodule = SegmentationDataModule(**data_kwargs(args, ckpt.data_hparams))
    datamodule.setup()
    trainer = build_trainer(args, name="eval")

    rows = []
    for split in args.split:
        loader = datamodule.dataloader(split)
        result = trainer.test(module, dataloaders=loader, verbose=False)[0]
        rows.append({"split": split, "images": tested_images(trainer, loader), **stage_metrics(result, "test")})
    print(f"checkpoint: {args.checkpoint} (config {module.net.config or 'fp'}, base {module.hparams.base})")
    print(f"data: {datamodule.root} ({datamodule.layout.name}, size {datamodule.size or 'native'})")
    print(metrics_table(rows))
    if args.output:
        write_json(args.output, {
            "checkpoint": str(args.checkpoint),
            "config": str(module.net.config or "fp"),
            "quant": module.net.quant.as_dict(),
            "base": module.hparams.base,
            "data": {k: v for k, v in datamodule.hparams.items() if k != "augment"},
            "metrics": {r["split"]: {k: v for k, v in r.items() if k != "split"} for r in rows},
        })
        print(f"wrote {args.output}")
    return 0
