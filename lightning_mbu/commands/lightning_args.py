"""Arguments and builders shared by `lightning-mbu train`, `eval` and `info`.

Trainer flags pass through under Lightning's names (``--max-epochs`` -> ``max_epochs``);
data and model flags map onto SegmentationDataModule and SegmentationModule arguments.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import parse_size
from ..data.datamodule import NORMALIZATIONS

#: what `lightning-mbu train` uses when no --data is given: the built-in sample, sized to
#: train and evaluate in a couple of minutes on 2 CPU cores (explicit flags override these)
SAMPLE_DEFAULTS = {"size": 128, "base": 8, "max_epochs": 40, "lr": 3e-3, "batch_size": 4}


def number(text: str) -> int | float:
    """'2' -> 2 (batches), '0.5' -> 0.5 (a fraction): Lightning's limit_*_batches convention."""
    value = float(text) if any(c in text for c in ".eE") else int(text)
    if value < 0 or (isinstance(value, float) and value > 1):
        raise argparse.ArgumentTypeError(f"expected a number of batches >= 0 or a fraction in [0, 1], got {text}")
    return value


def _checked(kind, ok, what: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value
    return parse


#: argparse types refusing values no run can use; argparse names the flag in the one-line error
positive_int = _checked(int, lambda v: v >= 1, "an integer >= 1")
natural_int = _checked(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _checked(float, lambda v: v > 0, "a number > 0")
natural_float = _checked(float, lambda v: v >= 0, "a number >= 0")
epochs = _checked(int, lambda v: v >= 1 or v == -1, "an integer >= 1, or -1 for no limit")
fraction = _checked(float, lambda v: 0 <= v < 1, "a fraction in [0, 1)")


def add_force_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="overwrite existing output files (never an input)")


def add_data_args(p: argparse.ArgumentParser, fit: bool = True) -> None:
    """The data flags; without ``fit`` (eval) their defaults are the checkpoint's, and augmentation is absent."""
    g = p.add_argument_group("data (SegmentationDataModule)")

    def default(value: str) -> str:
        return f"default: {value}" if fit else "default: the checkpoint's"

    g.add_argument("--data", dest="data_root", type=Path, default=None,
                   help=f"dataset folder ({default('the built-in sample of 24 nuclei images')})")
    g.add_argument("--layout", choices=("dsb2018", "carvana", "isic", "folder"), default=None,
                   help=f"dataset layout ({default('detected from the folder')})")
    g.add_argument("--size", nargs="+", metavar="SIZE", default=None,
                   help=f"resize to HxW, H W or N (NxN); {default('the paper size of the layout')}")
    g.add_argument("--batch-size", type=positive_int, default=None, help=f"images per batch ({default('4')})")
    g.add_argument("--num-workers", type=natural_int, default=None, help="DataLoader workers (default 0)")
    g.add_argument("--val-fraction", type=fraction, default=None, help=f"validation share ({default('0.15')})")
    g.add_argument("--test-fraction", type=fraction, default=None, help=f"test share ({default('0.15')})")
    g.add_argument("--split-seed", type=int, default=None, help=f"seed of the train/val/test split ({default('0')})")
    g.add_argument("--normalization", choices=NORMALIZATIONS, default=None,
                   help=f"pixel normalisation ({default('image: per-image zero mean, unit variance')})")
    if fit:
        g.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                       help="train without augmentation")
    g.add_argument("--skip-bad", action="store_true", default=None,
                   help="skip unreadable or inconsistent samples with a warning instead of stopping")


_DATA_KEYS = {"data_root": "data_root", "layout": "layout", "size": "size", "batch_size": "batch_size",
              "num_workers": "num_workers", "val_fraction": "val_fraction", "test_fraction": "test_fraction",
              "split_seed": "seed", "normalization": "normalization", "augment": "augment", "skip_bad": "skip_bad"}


def data_kwargs(args: argparse.Namespace, base: dict | None = None) -> dict:
    """SegmentationDataModule arguments: ``base`` (e.g. a checkpoint's) overridden by the flags given."""
    kw = dict(base or {})
    kw.update({dst: getattr(args, src) for src, dst in _DATA_KEYS.items() if getattr(args, src, None) is not None})
    if getattr(args, "size", None) is not None:
        try:
            kw["size"] = parse_size(args.size)
        except ValueError as e:
            raise ValueError(f"--size: {e}") from None
    if kw.get("data_root") is not None:
        kw["data_root"] = str(kw["data_root"])
    return kw


def add_trainer_args(p: argparse.ArgumentParser, fit: bool) -> None:
    """Trainer flags; those that only matter for fitting (logs, seeds, epochs, resuming) only with ``fit``."""
    g = p.add_argument_group("trainer (passed to lightning.pytorch.Trainer)")
    g.add_argument("--accelerator", default="auto", help="cpu, gpu, auto, ...")
    g.add_argument("--devices", default="auto", help="number, list or 'auto'")
    g.add_argument("--precision", default=None, help="32-true, 16-mixed, bf16-mixed, ... (default: 32-true)")
    g.add_argument("--strategy", default="auto", help="e.g. ddp with --devices N for several GPUs")
    g.add_argument("--no-progress-bar", dest="progress_bar", action="store_false")
    g.add_argument("--limit-test-batches", type=number, default=None,
                   help="test batches: a count or a fraction (default: all)")
    if not fit:
        return
    g.add_argument("--default-root-dir", type=Path, default=None,
                   help="where logs and checkpoints go (default: the current folder)")
    g.add_argument("--logger", choices=("auto", "csv", "tensorboard", "none"), default="auto",
                   help="auto: CSV, plus TensorBoard when it is installed")
    g.add_argument("--seed", type=int, default=0, help="seed_everything (weights, augmentation)")
    g.add_argument("--max-epochs", type=epochs, default=None, help="default 30 (the paper's)")
    g.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (-1: no limit)")
    g.add_argument("--limit-train-batches", type=number, default=None,
                   help="training batches per epoch: a count or a fraction (default: all)")
    g.add_argument("--limit-val-batches", type=number, default=None,
                   help="validation batches: a count or a fraction (default: all)")
    g.add_argument("--log-every-n-steps", type=positive_int, default=10, help="logging interval in steps")
    g.add_argument("--check-val-every-n-epoch", type=positive_int, default=1, help="validation interval in epochs")
    g.add_argument("--sync-batchnorm", action="store_true", default=None,
                   help="batch-norm statistics over all devices' batches (DDP)")
    g.add_argument("--ckpt-path", type=Path, default=None,
                   help="resume training from this checkpoint, in its own run folder (default: a new run)")


def _devices(text: str):
    if text == "auto":
        return text
    return [int(d) for d in text.split(",") if d] if "," in text else int(text)


def check_accelerator(args: argparse.Namespace) -> None:
    """Refuse a GPU request on a machine without one, before any file is read or model built."""
    if str(args.accelerator).lower() in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"--accelerator {args.accelerator}: no GPU is available here (PyTorch sees no CUDA "
                             "device); use --accelerator cpu or auto")


def build_loggers(args: argparse.Namespace, name: str, run=None):
    """The run's loggers; ``run`` (a ``resume.RunFolder``) continues that run's version instead of a new one."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from lightning.pytorch.loggers.tensorboard import _TENSORBOARD_AVAILABLE

    logger = getattr(args, "logger", "none")
    if logger == "none":
        return False
    if logger == "tensorboard" and not _TENSORBOARD_AVAILABLE:
        raise ValueError("--logger tensorboard needs the tensorboard package (pip install tensorboard)")
    if run is None:
        csv = CSVLogger((args.default_root_dir or Path(".")) / "lightning_logs", name=name)
        tb_kwargs = {"version": csv.version}
    else:
        from .resume import ContinuedCSVLogger

        csv = ContinuedCSVLogger(run.save_dir, name=run.name, version=run.version, resume_step=run.step)
        tb_kwargs = {"version": run.version, "purge_step": run.step + 1}  # TensorBoard drops the lost steps
    if logger == "csv" or not _TENSORBOARD_AVAILABLE:
        return [csv]
    tb = TensorBoardLogger(csv.save_dir, name=csv.name, **tb_kwargs)
    return [tb] if logger == "tensorboard" else [csv, tb]


def build_trainer(args: argparse.Namespace, name: str, callbacks=(), run=None, **overrides):
    import lightning.pytorch as pl
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    check_accelerator(args)
    kw = dict(accelerator=args.accelerator, devices=_devices(str(args.devices)), strategy=args.strategy,
              precision=args.precision, default_root_dir=getattr(args, "default_root_dir", None),
              callbacks=list(callbacks), logger=build_loggers(args, name, run), enable_progress_bar=args.progress_bar,
              limit_test_batches=args.limit_test_batches)
    for key in ("max_epochs", "max_steps", "limit_train_batches", "limit_val_batches", "log_every_n_steps",
                "check_val_every_n_epoch", "sync_batchnorm"):
        if hasattr(args, key):
            kw[key] = getattr(args, key)
    kw.update(overrides)
    try:
        return pl.Trainer(**{k: v for k, v in kw.items() if v is not None})
    except MisconfigurationException as e:  # e.g. --devices 4 on a machine with 2 GPUs
        raise ValueError(f"trainer flags: {e}") from None


METRICS = ("dice", "iou", "f1", "loss")


def metrics_table(rows: list[dict]) -> str:
    """A fixed-width table of rows like {"split": "test", "images": 4, "dice": 0.8, ...}."""
    cols = ["split", "images", *[m for m in METRICS if any(m in r for r in rows)]]
    cells = [[c for c in cols]] + [
        [f"{r[c]:.4f}" if isinstance(r.get(c), float) else str(r.get(c, "-")) for c in cols] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells)


def stage_metrics(results: dict, stage: str) -> dict:
    """{'dice': .., 'iou': .., 'f1': .., 'loss': ..} from Lightning's '<stage>/<metric>' results."""
    return {m: float(results[f"{stage}/{m}"]) for m in METRICS if f"{stage}/{m}" in results}


def tested_images(trainer, loader) -> int:
    """How many images the last ``trainer.test`` saw (``limit_test_batches`` may cut the loader short).

    Under DDP each rank tests its share of the loader, so the per-rank batches count ``world_size`` times.
    """
    loader = loader[0] if isinstance(loader, (list, tuple)) else loader
    return min(len(loader.dataset), int(trainer.num_test_batches[0]) * loader.batch_size * trainer.world_size)
