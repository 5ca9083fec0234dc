"""`lightning-mbu train`: fit a SegmentationModule (MBUCallback for quantized configs), then test it."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..callbacks import MASK_SCHEDULES
from ..config import DEFAULT_T, STATISTICS, QuantSpec, parse_config
from ..files import check_output, write_json
from .lightning_args import (SAMPLE_DEFAULTS, add_data_args, add_force_arg, add_trainer_args, build_trainer,
                             check_accelerator, data_kwargs, metrics_table, natural_float, natural_int, positive_float,
                             positive_int, stage_metrics, tested_images)

DEFAULT_CONFIG = "BBBBMMMMBBBB"  # the transposed convs masked: cheap to mask, a large gain (paper §4)
PAPER_EPOCHS = 30


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a (masked-)binary U-Net and test it",
        description="Train a SegmentationModule with Lightning and test its best checkpoint. Without --data it "
                    "trains on the built-in sample with small settings "
                    f"({', '.join(f'{k}={v}' for k, v in SAMPLE_DEFAULTS.items())}); flags override them.",
    )
    g = p.add_argument_group("model (SegmentationModule, MBUCallback)")
    g.add_argument("--config", default=DEFAULT_CONFIG,
                   help=f"12 layer modes (B/M/2/4/8/F, e.g. {DEFAULT_CONFIG}) or name=mode,...; 'fp' for a "
                        "full-precision net")
    g.add_argument("--base", type=positive_int, default=None, help="width of the first level (default 64, the paper's)")
    g.add_argument("--stem-mode", default=QuantSpec.stem, help="mode of the second input conv (default masked)")
    g.add_argument("--statistic", choices=STATISTICS, default=QuantSpec.statistic,
                   help="masking threshold statistic")
    g.add_argument("--mask-schedule", choices=tuple(MASK_SCHEDULES), default="constant",
                   help="how the masking factor t reaches --target-t")
    g.add_argument("--target-t", type=natural_float, default=DEFAULT_T, help="masking factor t after the warm-up")
    g.add_argument("--warmup-epochs", type=natural_int, default=0, help="epochs of the linear/cosine ramp of t")
    g.add_argument("--init-from", type=Path, default=None, metavar="CKPT",
                   help="start from the weights of a trained full-precision checkpoint (default: random init)")
    g.add_argument("--optimizer", choices=("adam", "rmsprop"), default=None,
                   help="default: RMSprop for full precision, Adam for quantized (paper App. A.3)")
    g.add_argument("--lr", type=positive_float, default=None, help="default 1e-5 (the paper's)")
    g.add_argument("--weight-decay", type=natural_float, default=1e-8, help="optimizer weight decay")
    g.add_argument("--momentum", type=natural_float, default=0.9, help="RMSprop momentum")
    g.add_argument("--gradient-clip", type=natural_float, default=1.0, help="gradient-norm clipping (0: off)")
    g.add_argument("--dice-weight", type=natural_float, default=1.0, help="weight of soft Dice in the loss")
    add_data_args(p)
    add_trainer_args(p, fit=True)
    p.add_argument("--output", type=Path, default=None,
                   help="results JSON (default: results.json in the run's log folder)")
    add_force_arg(p)
    p.set_defaults(func=run)


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill unset flags: the sample's small settings without --data, else the paper's."""
    if args.init_from is not None and args.base is None:
        from ..distill import read_fp_checkpoint

        args.base = read_fp_checkpoint(args.init_from).hparams.get("base")  # the width must match the source
    on_sample = args.data_root is None
    defaults = SAMPLE_DEFAULTS if on_sample else {"base": 64, "max_epochs": PAPER_EPOCHS}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, [value] if key == "size" else value)
    return args


def quant_spec(args: argparse.Namespace) -> QuantSpec:
    return QuantSpec(parse_config(args.config), stem=args.stem_mode, statistic=args.statistic, t=args.target_t)


def build_module(args: argparse.Namespace):
    from ..distill import load_fp_weights
    from ..module import SegmentationModule

    module = SegmentationModule(
        quant_spec(args), base=args.base, optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay, momentum=args.momentum,
        grad_clip=args.gradient_clip, dice_weight=args.dice_weight,
    )
    if args.init_from is not None:
        load_fp_weights(module.net, args.init_from)
    return module


def read_resumed(args: argparse.Namespace) -> dict | None:
    """The --ckpt-path checkpoint as saved, checked to be one of ours before anything is built or trained."""
    from ..checkpoint import load_checkpoint

    if args.ckpt_path is None:
        return None
    import torch

    load_checkpoint(args.ckpt_path)  # a clear error for any file that is not ours
    return torch.load(args.ckpt_path, map_location="cpu", weights_only=True)


def resumed_run(args: argparse.Namespace, saved: dict | None, module):
    """The run folder a resumed checkpoint continues (None: a new run); its model must be the flags' model."""
    if saved is None:
        return None
    from lightning.pytorch.utilities import rank_zero_warn

    from .resume import run_folder

    ours, theirs = module.state_dict(), saved["state_dict"]
    if ours.keys() != theirs.keys() or any(ours[k].shape != theirs[k].shape for k in ours):
        hp = saved["hyper_parameters"]
        config = (hp.get("quant") or {}).get("config", hp.get("config"))
        raise ValueError(f"--ckpt-path {args.ckpt_path} holds config {config or 'fp'}, base {hp.get('base')}, "
                         f"but the flags give config {module.net.config or 'fp'}, base {module.net.base}; resume with "
                         "the model flags it was trained with")
    run = run_folder(args.ckpt_path, int(saved.get("global_step", 0)))
    if run is None:
        rank_zero_warn(f"--ckpt-path {args.ckpt_path} is not in a run's checkpoints folder: resuming into a new run")
    return run


def check_memory(args: argparse.Namespace, module, datamodule, trainer) -> None:
    """Refuse a size, batch or width whose training activations cannot fit the device, before training starts."""
    from ..memory import activation_bytes, free_bytes

    device = trainer.strategy.root_device
    if device.type == "cuda" and any(w in str(args.strategy) for w in ("fork", "notebook")):
        return  # reading GPU memory initialises CUDA, which forked workers cannot inherit
    free = free_bytes(device)
    size = datamodule.size or datamodule.native_size
    if free is None or size is None:
        return
    need = activation_bytes(module.net, size, datamodule.batch_size)
    if "16" in str(trainer.precision):  # half-precision activations: the bound halves
        need //= 2
    if need > free:
        raise ValueError(
            f"--size {size[0]} {size[1]} with --batch-size {datamodule.batch_size} and --base {module.net.base} needs "
            f"at least {need / 2**30:,.1f} GiB for one training step's activations, but {device} has "
            f"{free / 2**30:,.1f} GiB free; lower --size, --batch-size or --base")


def run(args: argparse.Namespace) -> int:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    from ..callbacks import MBUCallback
    from ..data import SegmentationDataModule
    from .resume import Resumable

    resolve_defaults(args)
    check_accelerator(args)
    if args.output:  # refused now, not after hours of training
        check_output(args.output, inputs=[args.ckpt_path, args.init_from], force=args.force)
    saved = read_resumed(args)
    pl.seed_everything(args.seed, workers=True, verbose=False)
    datamodule = SegmentationDataModule(**data_kwargs(args))
    module = build_module(args)
    run_dir = resumed_run(args, saved, module)
    datamodule.setup()  # every sample checked, and native sizes known, before the memory check and training
    validates = args.limit_val_batches != 0 and datamodule.val_fraction > 0
    # Lightning's save_last only copies the last *top-k* save, so the last epoch gets its own callback; it runs
    # after the best one, so last.ckpt holds that epoch's best score and a resumed run carries it on
    last = ModelCheckpoint(filename="last", enable_version_counter=False)
    best = None
    if validates:
        best = ModelCheckpoint(monitor="val/dice", mode="max", filename="best-epoch{epoch}-dice{val/dice:.4f}",
                               auto_insert_metric_name=False)
    callbacks = [best, last] if best else [last]
    if module.net.is_quantized:
        callbacks.append(MBUCallback(mask_schedule=args.mask_schedule, warmup_epochs=args.warmup_epochs))
    callbacks.append(Resumable(getattr(args, "argv", None) or sys.argv[1:], last))
    overrides = {"default_root_dir": run_dir.path} if run_dir and args.logger == "none" else {}
    trainer = build_trainer(args, name=str(module.net.config or "fp"), callbacks=callbacks, run=run_dir, **overrides)
    check_memory(args, module, datamodule, trainer)

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=args.ckpt_path)
    fit_seconds = time.perf_counter() - start
    best_path = (best.best_model_path if best else "") or None
    results = {
        "config": str(module.net.config or "fp"),
        "base": module.hparams.base,
        "data": {**datamodule.hparams, "layout": datamodule.layout.name, "size": datamodule.size},
        "epochs": trainer.current_epoch,
        "fit_seconds": round(fit_seconds, 1),
        "best_checkpoint": best_path,
        "best_val_dice": float(best.best_model_score) if best_path else None,
        "last_checkpoint": last.best_model_path or None,
    }
    rows = []
    if datamodule.test_fraction > 0 and args.limit_test_batches != 0:
        tested = trainer.test(module, datamodule=datamodule, ckpt_path=best_path, verbose=False)
        results["test"] = stage_metrics(tested[0], "test")
        results["test"]["images"] = tested_images(trainer, trainer.test_dataloaders)
        rows.append({"split": "test", **results["test"]})

    log_dir = Path(trainer.log_dir or trainer.default_root_dir)  # a broadcast under DDP: every rank must ask
    if trainer.is_global_zero:
        output = args.output or log_dir / "results.json"
        write_json(output, results)
        print(f"best checkpoint: {best_path}\nlast checkpoint: {results['last_checkpoint']}")
        if rows:
            print(metrics_table(rows))
        print(f"results: {output}")
    return 0
